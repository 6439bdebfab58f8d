package sandbox

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestEvictCount(t *testing.T) {
	for _, c := range []struct {
		name        string
		sizes       []int64
		used, limit int64
		want        int
	}{
		{"under limit", []int64{1, 2, 3}, 6, 10, 0},
		{"at limit", []int64{4, 6}, 10, 10, 0},
		{"oldest goes first", []int64{4, 4, 4}, 12, 10, 1},
		{"several", []int64{1, 1, 1, 5}, 8, 5, 3},
		{"newest stays even above limit", []int64{3, 20}, 23, 10, 1},
		{"single", []int64{20}, 20, 10, 0},
		{"empty", nil, 0, 0, 0},
	} {
		if got := evictCount(c.sizes, c.used, c.limit); got != c.want {
			t.Errorf("%s: evictCount = %d, want %d", c.name, got, c.want)
		}
	}
}

func TestCacheLRU(t *testing.T) {
	dir := t.TempDir()
	c, err := OpenCache(dir, 3000)
	if err != nil {
		t.Fatal(err)
	}
	blob := func(b byte) ([]byte, Hash) {
		d := bytes.Repeat([]byte{b}, 1000)
		return d, HashOf(d)
	}
	a, ha := blob('a')
	b, hb := blob('b')
	cc, hc := blob('c')
	d, hd := blob('d')
	for _, x := range []struct {
		d []byte
		h Hash
	}{{a, ha}, {b, hb}, {cc, hc}} {
		if err := c.Insert(x.h, x.d); err != nil {
			t.Fatal(err)
		}
	}
	c.Touch(ha) // a is now more recent than b
	if err := c.Insert(hd, d); err != nil {
		t.Fatal(err)
	}
	if c.Has(hb) {
		t.Error("b (least recently used) was kept")
	}
	for _, h := range []Hash{ha, hc, hd} {
		if !c.Has(h) {
			t.Errorf("%s evicted", h)
		}
	}
	if _, err := os.Stat(c.Path(hb)); !os.IsNotExist(err) {
		t.Errorf("evicted chunk file still on disk: %v", err)
	}
	if c.Used() != 3000 || c.Len() != 3 {
		t.Errorf("used %d in %d chunks", c.Used(), c.Len())
	}
	// A leftover temporary file and a stray name are removed on open; the
	// index is rebuilt from disk.
	os.WriteFile(filepath.Join(dir, "chunks", ".tmp-123"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, "chunks", "zz", "junk"), []byte("x"), 0o600)
	c2, err := OpenCache(dir, 3000)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Used() != 3000 || !c2.Has(ha) || !c2.Has(hd) {
		t.Errorf("reopened cache: used %d", c2.Used())
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks", ".tmp-123")); !os.IsNotExist(err) {
		t.Error("temporary file survived")
	}
	// A smaller limit on reopen evicts down to it.
	c3, err := OpenCache(dir, 1500)
	if err != nil {
		t.Fatal(err)
	}
	if c3.Used() > 1500 {
		t.Errorf("used %d above limit 1500", c3.Used())
	}
}
