package sd

import (
	"os"
	"strings"
	"testing"
)

func TestCatalogListsEveryMessageID(t *testing.T) {
	c := Catalog()
	for id, m := range registry {
		if !strings.Contains(c, "-- "+id+"\nSubject: "+m.Subject+"\n") {
			t.Errorf("catalog lacks %s (%s)", id, m.Name)
		}
		if m.Doc == "" || m.Subject == "" {
			t.Errorf("%s has no subject or doc", m.Name)
		}
	}
}

// The catalog shipped in packaging must be the one the code generates, or
// `journalctl -x` explains the wrong events.
func TestShippedCatalogIsCurrent(t *testing.T) {
	shipped, err := os.ReadFile("../../packaging/g8os.catalog")
	if err != nil {
		t.Fatalf("read shipped catalog: %v (regenerate with `make catalog`)", err)
	}
	if string(shipped) != Catalog() {
		t.Fatal("packaging/g8os.catalog is stale: run `make catalog`")
	}
}

func TestFieldName(t *testing.T) {
	for in, want := range map[string]string{"iface": "G8_IFACE", "controller-url": "G8_CONTROLLER_URL", "a.b": "G8_A_B"} {
		if got := fieldName(in); got != want {
			t.Errorf("fieldName(%q) = %q, want %q", in, got, want)
		}
	}
}
