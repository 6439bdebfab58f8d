package sd

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// loggedFields maps each message variable (e.g. "NetControllerFound") to
// the journal fields the code may log with it: every string literal, as a
// G_ field name, in each function that names the message, and in each
// function of the same package that logs a message chosen at run time
// (verdict.Msg.Attr()). Broad on purpose (messages and values count too):
// it proves a catalog reference can be filled, not that it always is.
func loggedFields(t *testing.T, root string) map[string]map[string]bool {
	t.Helper()
	fields := map[string]map[string]bool{}
	dynamic := map[string]map[string]bool{} // package dir → fields of run-time-chosen messages
	namedIn := map[string][]string{}        // package dir → message variables it names
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		inSD := f.Name.Name == "sd"
		ast.Inspect(f, func(n ast.Node) bool {
			var body *ast.BlockStmt
			switch fn := n.(type) {
			case *ast.FuncDecl:
				body = fn.Body
			case *ast.FuncLit:
				body = fn.Body
			}
			if body == nil {
				return true
			}
			var named []string
			lits := map[string]bool{}
			chosen := false
			ast.Inspect(body, func(n ast.Node) bool {
				switch x := n.(type) {
				case *ast.CallExpr:
					if sel, ok := x.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Attr" {
						if inner, ok := sel.X.(*ast.SelectorExpr); ok && inner.Sel.Name == "Msg" {
							chosen = true
						}
					}
				case *ast.SelectorExpr:
					if id, ok := x.X.(*ast.Ident); ok && id.Name == "sd" {
						named = append(named, x.Sel.Name)
					}
				case *ast.Ident:
					if inSD {
						named = append(named, x.Name)
					}
				case *ast.BasicLit:
					if x.Kind == token.STRING {
						if s, err := strconv.Unquote(x.Value); err == nil && s != "" {
							lits[fieldName(s)] = true
						}
					}
				}
				return true
			})
			dir := filepath.Dir(path)
			namedIn[dir] = append(namedIn[dir], named...)
			if chosen {
				if dynamic[dir] == nil {
					dynamic[dir] = map[string]bool{}
				}
				for l := range lits {
					dynamic[dir][l] = true
				}
			}
			for _, v := range named {
				if fields[v] == nil {
					fields[v] = map[string]bool{}
				}
				for l := range lits {
					fields[v][l] = true
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir, vs := range namedIn {
		for _, v := range vs {
			for l := range dynamic[dir] {
				fields[v][l] = true
			}
		}
	}
	return fields
}

var fieldRef = regexp.MustCompile(`@([A-Z0-9_]+)@`)

// Every @FIELD@ of the catalog is substituted by journalctl -x from the
// entry; one the code never logs would print as its bare name.
func TestCatalogFieldReferencesAreLogged(t *testing.T) {
	fields := loggedFields(t, "../..")
	for v, m := range messageVars(t) {
		refs := fieldRef.FindAllStringSubmatch(m.Doc, -1)
		for _, r := range refs {
			f := r[1]
			if strings.ContainsAny(f, "0123456789") {
				t.Errorf("%s: @%s@ has a digit; journalctl -x leaves such references unfilled", m.Name, f)
			}
			if f == "G_PHASE" || f == "SYSLOG_IDENTIFIER" || f == "_SYSTEMD_UNIT" || f == "UNIT" {
				continue
			}
			if !fields[v][f] {
				t.Errorf("%s (%s): catalog refers to @%s@, which no function logging it sets", m.Name, v, f)
			}
		}
		if bare := regexp.MustCompile(`(^|[^@A-Z_])(G8?_[A-Z0-9_]+)`).FindStringSubmatch(m.Doc); bare != nil {
			t.Errorf("%s: %s without @...@: journalctl -x would print the field's name, not its value", m.Name, bare[2])
		}
	}
}

// messageVars maps the Go variable of every registered message to it.
func messageVars(t *testing.T) map[string]MessageID {
	t.Helper()
	out := map[string]MessageID{}
	fset := token.NewFileSet()
	matches, _ := filepath.Glob("msgid_*.go")
	for _, p := range matches {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok || len(vs.Values) != 1 {
				return true
			}
			call, ok := vs.Values[0].(*ast.CallExpr)
			if !ok || len(call.Args) < 1 {
				return true
			}
			if id, ok := call.Fun.(*ast.Ident); !ok || id.Name != "register" {
				return true
			}
			lit, _ := call.Args[0].(*ast.BasicLit)
			id, _ := strconv.Unquote(lit.Value)
			out[vs.Names[0].Name] = registry[id]
			return true
		})
	}
	if len(out) != len(registry) {
		t.Fatalf("found %d message variables, registry has %d", len(out), len(registry))
	}
	return out
}
