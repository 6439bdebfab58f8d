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
	for in, want := range map[string]string{"iface": "G_IFACE", "controller-url": "G_CONTROLLER_URL", "a.b": "G_A_B"} {
		if got := fieldName(in); got != want {
			t.Errorf("fieldName(%q) = %q, want %q", in, got, want)
		}
	}
}

// The catalog's Support: link is a real page that walks through the
// failures an operator meets, each with the MESSAGE_ID to ask journalctl
// for.
func TestTroubleshootingCoversFailures(t *testing.T) {
	doc, err := os.ReadFile("../../docs/troubleshooting.md")
	if err != nil {
		t.Fatalf("the catalog's Support: page: %v", err)
	}
	if !strings.Contains(Catalog(), "Support: "+SupportURL+"\n") || !strings.HasSuffix(SupportURL, "/docs/troubleshooting.md") {
		t.Errorf("catalog does not link %s", SupportURL)
	}
	for _, m := range []MessageID{NetRoundFailed, UnlockPending, UnlockDenied, UnlockControllerError, ACSessionRefused, ACSessionLost,
		UnlockWrongKey, UnlockCorrupt, UnlockFUSEDied, ChainPhaseFailed, FSSandboxFailed, FSConfigRejected, FSStoreUnreachable,
		FSChunkCorrupt, SSHDLoginRejected, ACNodePending, ACRequestFailed} {
		if !strings.Contains(string(doc), m.ID) {
			t.Errorf("docs/troubleshooting.md does not show how to find %s (MESSAGE_ID=%s)", m.Name, m.ID)
		}
	}
}
