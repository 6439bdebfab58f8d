// Package appreport is what testdata/app's "report" mode prints about
// itself, shared by the app and the tests that read it.
package appreport

// Prefix starts the report's journal line; base64-encoded JSON follows,
// so that any byte of argv or the environment survives the journal.
const Prefix = "app: report "

// Report is what the app saw of itself.
type Report struct {
	Args     []string          `json:"args"`
	Env      map[string]string `json:"env"`
	UID      int               `json:"uid"`
	CapEff   string            `json:"cap_eff"`
	CapBnd   string            `json:"cap_bnd"`
	NoNewPrv string            `json:"no_new_privs"`
	Writable map[string]bool   `json:"writable"` // path → a file could be created in it
	Devices  []string          `json:"devices"`  // /dev entries
}
