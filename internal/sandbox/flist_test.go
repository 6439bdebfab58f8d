package sandbox

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
)

func sampleFlist(t testing.TB) []byte {
	t.Helper()
	w := NewFlistWriter(minChunkSize, Entry{Mode: 0o755, MtimeSec: 1700000000})
	ref := func(b byte, size uint32) ChunkRef {
		var h Hash
		h[0] = b
		return ChunkRef{Hash: h, StoredSize: size}
	}
	adds := []struct {
		p string
		e Entry
	}{
		{"bin", Entry{Mode: syscall.S_IFDIR | 0o755}},
		{"bin/sh", Entry{Mode: syscall.S_IFREG | 0o755, Size: minChunkSize + 10, Chunks: []ChunkRef{ref(1, minChunkSize), ref(2, 10)}, LinkID: 7}},
		{"bin/bash", Entry{Mode: syscall.S_IFREG | 0o755, LinkID: 7}},
		{"bin/ls", Entry{Mode: syscall.S_IFLNK | 0o777, Target: "sh"}},
		{"etc", Entry{Mode: syscall.S_IFDIR | 0o700, UID: 5, GID: 6, Xattrs: []Xattr{{"user.a", "1"}}}},
		{"etc/empty", Entry{Mode: syscall.S_IFREG | 0o600}},
		{"etc/odd name \n é", Entry{Mode: syscall.S_IFREG | 0o644, Size: 3, Chunks: []ChunkRef{{Hash: ref(3, 0).Hash, StoredSize: 2, Flags: ChunkZstd}}}},
		{"etc/fifo", Entry{Mode: syscall.S_IFIFO | 0o644}},
	}
	for _, a := range adds {
		if err := w.Add(a.p, a.e); err != nil {
			t.Fatal(err)
		}
	}
	data, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestFlistRoundTrip(t *testing.T) {
	data := sampleFlist(t)
	fl, err := ParseFlist(data)
	if err != nil {
		t.Fatal(err)
	}
	if fl.Hash() != HashOf(data) {
		t.Error("flist hash is not BLAKE3 of the file")
	}
	var paths []string
	fl.Walk(func(p string, _ uint32, n *Node) error { paths = append(paths, p); return nil })
	want := "bin bin/bash bin/ls bin/sh etc etc/empty etc/fifo etc/odd name \n é"
	if got := strings.Join(paths, " "); got != want {
		t.Errorf("walk = %q, want %q", got, want)
	}
	root := fl.Node(0)
	bin, ok := fl.Lookup(&root, "bin")
	if !ok {
		t.Fatal("bin not found")
	}
	bn := fl.Node(bin)
	sh, _ := fl.Lookup(&bn, "sh")
	bash, _ := fl.Lookup(&bn, "bash")
	if sh != bash {
		t.Errorf("hard links sh=%d bash=%d are different nodes", sh, bash)
	}
	if n := fl.Node(sh); n.Nlink != 2 || n.Size != minChunkSize+10 || n.B != 2 || fl.Chunk(n.A + 1).Hash[0] != 2 {
		t.Errorf("sh node %+v", n)
	}
	if _, ok := fl.Lookup(&bn, "zsh"); ok {
		t.Error("found a missing name")
	}
	ls, _ := fl.Lookup(&bn, "ls")
	if n := fl.Node(ls); string(fl.Target(&n)) != "sh" || n.Size != 2 {
		t.Errorf("symlink %+v target %q", n, fl.Target(&n))
	}
	etc, _ := fl.Lookup(&root, "etc")
	en := fl.Node(etc)
	if en.UID != 5 || en.GID != 6 || en.Mode != syscall.S_IFDIR|0o700 || en.XattrN != 1 {
		t.Errorf("etc %+v", en)
	}
	if k, v := fl.Xattr(en.XattrA); string(k) != "user.a" || string(v) != "1" {
		t.Errorf("xattr %q=%q", k, v)
	}
	if root.Nlink != 4 { // ., .., bin/.., etc/..
		t.Errorf("root nlink %d", root.Nlink)
	}
	// Encoding is deterministic: the same tree has the same hash.
	if !bytes.Equal(sampleFlist(t), data) {
		t.Error("encoding the same tree twice differs")
	}
}

func TestFlistRejects(t *testing.T) {
	good := sampleFlist(t)
	resum := func(d []byte) []byte {
		return withChecksum(d)
	}
	cases := []struct {
		name  string
		mut   func([]byte) []byte
		field string
	}{
		{"truncated", func(d []byte) []byte { return d[:len(d)-1] }, "size"},
		{"short", func(d []byte) []byte { return d[:10] }, "header"},
		{"magic", func(d []byte) []byte { d[0] = 'X'; return d }, "magic"},
		{"version", func(d []byte) []byte { d[8] = 9; return resum(d) }, "version"},
		{"flipped bit", func(d []byte) []byte { d[headerSize+3] ^= 1; return d }, "checksum"},
		{"chunk size", func(d []byte) []byte { le.PutUint32(d[12:], 5000); return resum(d) }, "chunk_size"},
		{"root not dir", func(d []byte) []byte {
			le.PutUint32(d[headerSize:], syscall.S_IFREG|0o644)
			return resum(d)
		}, "node 0"},
		{"dirent out of range", func(d []byte) []byte {
			le.PutUint32(d[headerSize+44:], 1000) // root entry count
			return resum(d)
		}, "node 0"},
		{"dir cycle", func(d []byte) []byte {
			// Point the first entry of the root ("bin") at the root itself.
			n := le.Uint32(d[16:])
			le.PutUint32(d[headerSize+int(n)*nodeSize+8:], 0)
			return resum(d)
		}, "dirent 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := c.mut(append([]byte(nil), good...))
			_, err := ParseFlist(d)
			var fe *FlistError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a FlistError", err)
			}
			if fe.Field != c.field {
				t.Errorf("field = %q (%v), want %q", fe.Field, err, c.field)
			}
		})
	}
}

func TestFlistWriterRejects(t *testing.T) {
	w := NewFlistWriter(DefaultChunkSize, Entry{Mode: 0o755})
	for _, c := range []struct {
		p string
		e Entry
	}{
		{"a/b", Entry{Mode: syscall.S_IFREG}},                    // no parent
		{"..", Entry{Mode: syscall.S_IFDIR}},                     // bad name
		{"f", Entry{Mode: syscall.S_IFREG, Size: 5}},             // no chunks
		{"l", Entry{Mode: syscall.S_IFLNK}},                      // no target
		{strings.Repeat("x", 256), Entry{Mode: syscall.S_IFREG}}, // too long
	} {
		if err := w.Add(c.p, c.e); err == nil {
			t.Errorf("Add(%q) accepted", c.p)
		}
	}
}

// FuzzParseFlist: no input may panic the parser or yield a flist whose
// accessors go out of bounds.
func FuzzParseFlist(f *testing.F) {
	good := sampleFlist(f)
	f.Add(good)
	f.Add(good[:headerSize+trailerSize])
	f.Add([]byte(flistMagic))
	bad := append([]byte(nil), good...)
	bad[headerSize+44] = 0xff
	f.Add(bad)
	f.Fuzz(func(t *testing.T, data []byte) {
		// Most mutations break the checksum; fix it so the fuzzer reaches
		// the structural checks too.
		for _, d := range [][]byte{data, withChecksum(data)} {
			fl, err := ParseFlist(d)
			if err != nil {
				continue
			}
			fl.Walk(func(p string, idx uint32, n *Node) error {
				if n.IsRegular() {
					for k := uint32(0); k < n.B; k++ {
						fl.Chunk(n.A + k)
					}
				}
				if n.IsSymlink() {
					fl.Target(n)
				}
				for x := n.XattrA; x < n.XattrA+n.XattrN; x++ {
					fl.Xattr(x)
				}
				if n.IsDir() {
					fl.Lookup(n, "x")
				}
				return nil
			})
		}
	})
}

func withChecksum(d []byte) []byte {
	if len(d) < headerSize+trailerSize {
		return d
	}
	d = append([]byte(nil), d...)
	body := d[:len(d)-trailerSize]
	sum := blake3Sum(body)
	copy(d[len(body):], sum[:])
	return d
}

func TestPackFlist(t *testing.T) {
	data := sampleFlist(t)
	packed := PackFlist(data)
	if len(packed) >= len(data) {
		t.Errorf("packed %d bytes from %d", len(packed), len(data))
	}
	for _, in := range [][]byte{packed, data} { // packed, or a plain flist as is
		got, err := UnpackFlist(in)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("unpack: %v", err)
		}
	}
	var fe *FlistError
	if _, err := UnpackFlist([]byte("neither")); !errors.As(err, &fe) {
		t.Errorf("garbage: %v", err)
	}
}

// patchNode rewrites a field of the node at path in a copy of data and
// fixes the checksum, as a hostile flist author would.
func patchNode(t testing.TB, data []byte, path string, fieldOff int, v uint64, width int) []byte {
	t.Helper()
	fl, err := ParseFlist(data)
	if err != nil {
		t.Fatal(err)
	}
	idx := ^uint32(0)
	fl.Walk(func(p string, i uint32, _ *Node) error {
		if p == path {
			idx = i
		}
		return nil
	})
	if idx == ^uint32(0) {
		t.Fatalf("%s not in the sample flist", path)
	}
	d := append([]byte(nil), data...)
	at := headerSize + int(idx)*nodeSize + fieldOff
	if width == 8 {
		le.PutUint64(d[at:], v)
	} else {
		le.PutUint32(d[at:], uint32(v))
	}
	return withChecksum(d)
}

// A size near 2^64 made ⌈size/chunk⌉ wrap to 0, so a chunkless file of
// 16 EiB passed and a read of it indexed chunk refs that are not its own.
func TestFlistSizeOverflow(t *testing.T) {
	good := sampleFlist(t)
	for _, c := range []struct {
		name string
		size uint64
		a    uint64
	}{
		{"2^64-1 without chunks", 1<<64 - 1, 0},
		{"wraps to zero chunks", 1<<64 - minChunkSize + 1, 0},
		{"onto another file's chunks", 1<<64 - 1, 1},
		{"over the size cap", MaxFileSize + 1, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := patchNode(t, good, "etc/empty", 40, c.a, 4)
			d = patchNode(t, d, "etc/empty", 16, c.size, 8)
			_, err := ParseFlist(d)
			var fe *FlistError
			if !errors.As(err, &fe) || !strings.HasPrefix(fe.Field, "node ") {
				t.Fatalf("size %d accepted (err %v)", c.size, err)
			}
		})
	}
	w := NewFlistWriter(minChunkSize, Entry{Mode: 0o755})
	if err := w.Add("huge", Entry{Mode: syscall.S_IFREG | 0o644, Size: 1<<64 - 1}); err == nil {
		t.Error("writer accepted a 2^64-1 byte file without chunks")
	}
}

// checkSpans is the read invariant: a read covers exactly the bytes of the
// file it asks for, clipped at its end, only through the file's own chunks,
// each within its plain length.
func checkSpans(t *testing.T, fl *Flist, n *Node, off uint64, size int) {
	t.Helper()
	want := uint64(0)
	if off < n.Size && size > 0 {
		want = min(n.Size-off, uint64(size))
	}
	got := uint64(0)
	pos := off
	fl.Spans(n, off, size, func(sp Span) bool {
		if sp.K >= n.B {
			t.Fatalf("span of chunk %d, file has %d", sp.K, n.B)
		}
		if sp.Plain != fl.plainSize(n, sp.K) || uint64(sp.Off)+uint64(sp.Len) > uint64(sp.Plain) || sp.Len == 0 {
			t.Fatalf("span %+v outside its chunk", sp)
		}
		if uint64(sp.K)*uint64(fl.ChunkSize())+uint64(sp.Off) != pos {
			t.Fatalf("span %+v does not continue at %d", sp, pos)
		}
		pos += uint64(sp.Len)
		got += uint64(sp.Len)
		return true
	})
	if got != want {
		t.Fatalf("read of %d at %d (size %d) covered %d bytes, want %d", size, off, n.Size, got, want)
	}
}

// FuzzFlistRead: for any flist the parser accepts, every file's chunks add
// up to its size, and reads at any offset stay inside that file's chunks.
func FuzzFlistRead(f *testing.F) {
	good := sampleFlist(f)
	f.Add(good, uint64(0), 4096)
	f.Add(good, uint64(minChunkSize-1), 100)
	f.Add(patchNode(f, good, "etc/empty", 16, 1<<64-1, 8), uint64(1<<63), 1<<20)
	f.Fuzz(func(t *testing.T, data []byte, off uint64, size int) {
		fl, err := ParseFlist(withChecksum(data))
		if err != nil {
			return
		}
		size %= 8 << 20
		for i := uint32(0); i < fl.Len(); i++ {
			n := fl.Node(i)
			if !n.IsRegular() {
				continue
			}
			sum := uint64(0)
			for k := uint32(0); k < n.B; k++ {
				p := fl.plainSize(&n, k)
				if p == 0 || p > fl.ChunkSize() {
					t.Fatalf("node %d chunk %d: plain size %d", i, k, p)
				}
				sum += uint64(p)
			}
			if sum != n.Size {
				t.Fatalf("node %d: chunks hold %d bytes, size is %d", i, sum, n.Size)
			}
			checkSpans(t, fl, &n, off, size)
			if n.Size > 0 {
				checkSpans(t, fl, &n, off%n.Size, size)
			}
		}
	})
}

// FuzzUnpackFlist: a packed flist from a store is untrusted; unpacking
// must fail cleanly (never panic or exceed MaxFlistSize) and what it
// returns must be exactly what was packed when the input is a packing.
func FuzzUnpackFlist(f *testing.F) {
	good := sampleFlist(f)
	f.Add(PackFlist(good))
	f.Add(good)
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, blob []byte) {
		out, err := UnpackFlistTo(io.Discard, bytes.NewReader(blob), MaxFlistSize)
		if err == nil && out > MaxFlistSize {
			t.Fatalf("unpacked %d bytes", out)
		}
		data, err := UnpackFlist(blob)
		if err != nil {
			return
		}
		if len(data) > MaxFlistSize {
			t.Fatalf("unpacked %d bytes", len(data))
		}
		if !bytes.Equal(data, blob) {
			again, err := UnpackFlist(PackFlist(data))
			if err != nil || !bytes.Equal(again, data) {
				t.Fatalf("repacking does not round-trip: %v", err)
			}
		}
	})
}
