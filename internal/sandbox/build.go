package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// BuildOptions tune Build.
type BuildOptions struct {
	ChunkSize uint32    // DefaultChunkSize when zero
	Workers   int       // files chunked and uploaded in parallel; GOMAXPROCS*2 when zero
	Progress  io.Writer // a terminal to draw a progress bar on, or nil
}

// BuildResult describes a built flist.
type BuildResult struct {
	Flist         []byte
	Hash          Hash // of the flist file
	Ref           Hash // of the packed flist in the store: fs.toml's "blake3:<hex>"
	Entries       int
	Bytes         int64 // regular file bytes in the tree
	Chunks        int   // chunk references
	Uploaded      int   // blobs the store did not have yet
	UploadedBytes int64
}

var zstdEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))

type walked struct {
	rel    string
	st     unix.Stat_t
	entry  Entry
	linkOf bool // a later name of an already chunked hard link
}

// Build walks root, stores every chunk the store does not already have,
// and returns the flist (which it also stores, so it can be referenced as
// "blake3:<hex>"). Nothing is written outside the store.
func Build(ctx context.Context, root string, store Store, opt BuildOptions) (*BuildResult, error) {
	if opt.ChunkSize == 0 {
		opt.ChunkSize = DefaultChunkSize
	}
	if opt.Workers <= 0 {
		opt.Workers = runtime.GOMAXPROCS(0) * 2
	}
	var rootSt unix.Stat_t
	if err := unix.Lstat(root, &rootSt); err != nil {
		return nil, fmt.Errorf("build: %s: %w", root, err)
	}
	if rootSt.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("build: %s: not a directory", root)
	}
	var items []*walked
	links := map[[2]uint64]uint64{}
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("build: %w", err)
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		w := &walked{rel: filepath.ToSlash(rel)}
		if err := unix.Lstat(p, &w.st); err != nil {
			return fmt.Errorf("build: %s: %w", p, err)
		}
		w.entry = entryOf(&w.st)
		switch w.st.Mode & syscall.S_IFMT {
		case syscall.S_IFLNK:
			t, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("build: %s: %w", p, err)
			}
			w.entry.Target = t
		case syscall.S_IFREG:
			if w.st.Nlink > 1 {
				key := [2]uint64{uint64(w.st.Dev), w.st.Ino}
				if id, ok := links[key]; ok {
					w.entry.LinkID, w.linkOf = id, true
				} else {
					links[key] = uint64(len(links) + 1)
					w.entry.LinkID = links[key]
				}
			}
			if !w.linkOf {
				total += w.st.Size
			}
		}
		w.entry.Xattrs = readXattrs(p)
		items = append(items, w)
		return nil
	})
	if err != nil {
		return nil, err
	}

	var bar *progressbar.ProgressBar
	if opt.Progress != nil {
		bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(opt.Progress),
			progressbar.OptionShowBytes(true), progressbar.OptionSetDescription("chunking"),
			progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100_000_000),
			progressbar.OptionClearOnFinish())
	}
	res := &BuildResult{Entries: len(items)}
	var (
		uploaded, upBytes atomic.Int64
		known             sync.Map // Hash -> struct{}: stored or being stored
		firstErr          error
		errOnce           sync.Once
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan *walked)
	var wg sync.WaitGroup
	for i := 0; i < opt.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, opt.ChunkSize)
			for w := range jobs {
				refs, err := chunkFile(ctx, filepath.Join(root, filepath.FromSlash(w.rel)), w.st.Size, buf, store, &known, func(stored int) {
					uploaded.Add(1)
					upBytes.Add(int64(stored))
				}, bar)
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					continue
				}
				w.entry.Chunks = refs
			}
		}()
	}
	for _, w := range items {
		if w.st.Mode&syscall.S_IFMT == syscall.S_IFREG && !w.linkOf && w.st.Size > 0 {
			select {
			case jobs <- w:
			case <-ctx.Done():
			}
		}
	}
	close(jobs)
	wg.Wait()
	if bar != nil {
		bar.Finish()
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	rootEntry := entryOf(&rootSt)
	rootEntry.Xattrs = readXattrs(root)
	fw := NewFlistWriter(opt.ChunkSize, rootEntry)
	for _, w := range items {
		if err := fw.Add(w.rel, w.entry); err != nil {
			return nil, err
		}
		if w.st.Mode&syscall.S_IFMT == syscall.S_IFREG && !w.linkOf {
			res.Bytes += w.st.Size
			res.Chunks += len(w.entry.Chunks)
		}
	}
	data, err := fw.Encode()
	if err != nil {
		return nil, err
	}
	res.Flist, res.Hash = data, HashOf(data)
	packed := PackFlist(data)
	res.Ref = HashOf(packed)
	if err := putMissing(ctx, store, res.Ref, packed); err != nil {
		return nil, fmt.Errorf("build: storing the flist: %w", err)
	}
	res.Uploaded, res.UploadedBytes = int(uploaded.Load()), upBytes.Load()
	return res, nil
}

func entryOf(st *unix.Stat_t) Entry {
	e := Entry{
		Mode: st.Mode, UID: st.Uid, GID: st.Gid,
		MtimeSec: st.Mtim.Sec, MtimeNsec: uint32(st.Mtim.Nsec),
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		e.Size = uint64(st.Size)
	case syscall.S_IFCHR, syscall.S_IFBLK:
		e.Rdev = uint32(st.Rdev)
	}
	return e
}

// readXattrs keeps what the file system reports; a file system without
// xattr support simply has none.
func readXattrs(p string) []Xattr {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		return nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil
	}
	var out []Xattr
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vs, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			continue
		}
		v := make([]byte, vs)
		vs, err = unix.Lgetxattr(p, name, v)
		if err != nil {
			continue
		}
		out = append(out, Xattr{Name: name, Value: string(v[:vs])})
	}
	return out
}

// chunkFile splits one file into chunks, compressing a chunk only when
// that saves at least an eighth, and uploads those the store lacks.
func chunkFile(ctx context.Context, p string, size int64, buf []byte, store Store, known *sync.Map, onUpload func(int), bar *progressbar.ProgressBar) ([]ChunkRef, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	defer f.Close()
	var refs []ChunkRef
	var comp []byte
	for off := int64(0); off < size; {
		n, err := io.ReadFull(f, buf[:min(int64(len(buf)), size-off)])
		if err != nil {
			return nil, fmt.Errorf("build: %s: read at %d: %w (file changed while building?)", p, off, err)
		}
		plain := buf[:n]
		blob, flags := plain, uint32(0)
		comp = zstdEncoder.EncodeAll(plain, comp[:0])
		if len(comp) < n-n/8 {
			blob, flags = comp, ChunkZstd
		}
		h := HashOf(blob)
		if _, seen := known.LoadOrStore(h, struct{}{}); !seen {
			if err := putMissingCounted(ctx, store, h, blob, onUpload); err != nil {
				known.Delete(h)
				return nil, fmt.Errorf("build: %s: %w", p, err)
			}
		}
		refs = append(refs, ChunkRef{Hash: h, StoredSize: uint32(len(blob)), Flags: flags})
		off += int64(n)
		if bar != nil {
			bar.Add64(int64(n))
		}
	}
	return refs, nil
}

func putMissing(ctx context.Context, s Store, h Hash, data []byte) error {
	return putMissingCounted(ctx, s, h, data, func(int) {})
}

func putMissingCounted(ctx context.Context, s Store, h Hash, data []byte, onUpload func(int)) error {
	ok, err := s.Has(ctx, h)
	if err != nil {
		var se *StatusError
		// A server that refuses HEAD to an admin still takes the PUT.
		if !errors.As(err, &se) {
			return err
		}
	}
	if ok {
		return nil
	}
	if err := s.Put(ctx, h, data); err != nil {
		return err
	}
	onUpload(len(data))
	return nil
}

// PackFlist is how a flist is stored: zstd-compressed (metadata compresses
// several-fold, which keeps a 100,000-file flist well under a controller's
// 16 MiB object limit). Its BLAKE3-256 is the flist's reference.
func PackFlist(flist []byte) []byte { return zstdEncoder.EncodeAll(flist, nil) }

// maxFlistWindow bounds the memory a packed flist's zstd window may claim
// while it is unpacked as a stream; g8-fs build packs with an 8 MiB window.
const maxFlistWindow = 64 << 20

// UnpackFlist reverses PackFlist; a blob that is already a plain flist
// (uploaded by hand) is returned as is.
func UnpackFlist(blob []byte) ([]byte, error) {
	if len(blob) >= len(flistMagic) && string(blob[:len(flistMagic)]) == flistMagic {
		if len(blob) > MaxFlistSize {
			return nil, ferr("size", "%d bytes is over the %d-byte limit", len(blob), MaxFlistSize)
		}
		return blob, nil
	}
	var out bytes.Buffer
	if _, err := UnpackFlistTo(&out, bytes.NewReader(blob), MaxFlistSize); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// UnpackFlistTo streams the flist in r (zstd-packed, or plain) into w and
// returns its length; a flist longer than limit (at most MaxFlistSize) is
// refused once that many bytes have been written, so nothing larger is
// ever held.
func UnpackFlistTo(w io.Writer, r io.Reader, limit int64) (int64, error) {
	limit = min(limit, MaxFlistSize)
	raw := &readErrs{r: r}
	br := bufio.NewReaderSize(raw, 64<<10)
	src := &readErrs{r: br}
	if head, _ := br.Peek(len(flistMagic)); string(head) != flistMagic && raw.err == nil {
		dec, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxFlistWindow), zstd.WithDecoderMaxMemory(uint64(limit)+1))
		if err != nil {
			return 0, ferr("packing", "zstd: %v", err)
		}
		defer dec.Close()
		src.r = dec
	}
	n, err := io.Copy(w, io.LimitReader(src, limit+1))
	switch {
	case raw.err != nil:
		// The source failed (a dropped connection): not the flist's fault.
		return n, raw.err
	case src.err != nil && errors.Is(src.err, zstd.ErrDecoderSizeExceeded):
		return n, ferr("size", "unpacks to more than %d bytes", limit)
	case src.err != nil:
		return n, ferr("packing", "not a zstd-packed flist: %v", src.err)
	case err != nil:
		return n, err
	case n > limit:
		return n, ferr("size", "unpacks to more than %d bytes", limit)
	}
	return n, nil
}

// readErrs keeps the reader's own error apart from the writer's, which
// io.Copy returns alike.
type readErrs struct {
	r   io.Reader
	err error
}

func (e *readErrs) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}
