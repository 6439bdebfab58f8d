package sshd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// wholeWrites is the server's side of the stream; it fails the test when a
// write is not exactly one SFTP message (each write on an SSH channel is at
// least one SSH packet).
type wholeWrites struct {
	net.Conn
	t *testing.T

	mu     sync.Mutex
	writes int
}

func (w *wholeWrites) Write(p []byte) (int, error) {
	if len(p) < 5 || int(binary.BigEndian.Uint32(p))+4 != len(p) {
		w.t.Errorf("server wrote %d bytes that are not one SFTP message", len(p))
	}
	w.mu.Lock()
	w.writes++
	w.mu.Unlock()
	return w.Conn.Write(p)
}

// sftpMsg builds a client message: type, then uint32s, uint64s, strings
// and raw bytes in the order given.
func sftpMsg(typ byte, fields ...any) []byte {
	b := []byte{0, 0, 0, 0, typ}
	for _, f := range fields {
		switch v := f.(type) {
		case uint32:
			b = binary.BigEndian.AppendUint32(b, v)
		case uint64:
			b = binary.BigEndian.AppendUint64(b, v)
		case string:
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		case []byte:
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

func readMsg(t *testing.T, r io.Reader) (byte, []byte) {
	t.Helper()
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:4])-1)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	return hdr[4], body
}

func str(b []byte) (string, []byte) {
	n := binary.BigEndian.Uint32(b)
	return string(b[4 : 4+n]), b[4+n:]
}

// TestSFTPConnLimits talks SFTP to pkg/sftp's server through the shim: the
// version message announces limits@openssh.com beside pkg/sftp's own
// extensions, the limits request is answered, a 255 KiB write and read
// each take one request, and every message goes out in one write.
func TestSFTPConnLimits(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	ww := &wholeWrites{Conn: server, t: t}
	srv, err := newSFTPServer(ww)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	send := func(m []byte) {
		t.Helper()
		_ = client.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := client.Write(m); err != nil {
			t.Fatal(err)
		}
	}

	send(sftpMsg(1, uint32(3)))
	typ, body := readMsg(t, client)
	if typ != sftpVersion || binary.BigEndian.Uint32(body) != 3 {
		t.Fatalf("version reply: type %d body %x", typ, body)
	}
	exts := map[string]string{}
	for rest := body[4:]; len(rest) > 0; {
		var name, data string
		name, rest = str(rest)
		data, rest = str(rest)
		exts[name] = data
	}
	if exts[limitsExtension] != "1" || exts["posix-rename@openssh.com"] != "1" {
		t.Errorf("extensions announced: %v", exts)
	}

	send(sftpMsg(sftpExtended, uint32(7), limitsExtension))
	typ, body = readMsg(t, client)
	if typ != sftpExtendedReply || len(body) != 4+4*8 || binary.BigEndian.Uint32(body) != 7 {
		t.Fatalf("limits reply: type %d body %x", typ, body)
	}
	if pkt, rd, wr := binary.BigEndian.Uint64(body[4:]), binary.BigEndian.Uint64(body[12:]), binary.BigEndian.Uint64(body[20:]); pkt != sftpMaxMessage || rd != sftpMaxData || wr != sftpMaxData {
		t.Errorf("limits: packet %d read %d write %d", pkt, rd, wr)
	}

	// An extension pkg/sftp knows still reaches it.
	send(sftpMsg(sftpExtended, uint32(8), "statvfs@openssh.com", "/"))
	if typ, body = readMsg(t, client); typ != sftpExtendedReply || binary.BigEndian.Uint32(body) != 8 {
		t.Errorf("statvfs reply: type %d", typ)
	}

	path := filepath.Join(t.TempDir(), "f")
	send(sftpMsg(3, uint32(9), path, uint32(1|2|8|0x10), uint32(0))) // OPEN read|write|creat|trunc
	typ, body = readMsg(t, client)
	if typ != 102 {
		t.Fatalf("open: type %d body %x", typ, body)
	}
	handle, _ := str(body[4:])
	data := bytes.Repeat([]byte("g8os sftp "), sftpMaxData/10+1)[:sftpMaxData]
	before := ww.writes
	send(sftpMsg(6, uint32(10), handle, uint64(0), data)) // WRITE
	if typ, body = readMsg(t, client); typ != 101 || binary.BigEndian.Uint32(body[4:]) != 0 {
		t.Fatalf("write: type %d body %x", typ, body)
	}
	send(sftpMsg(5, uint32(11), handle, uint64(0), uint32(sftpMaxData))) // READ
	typ, body = readMsg(t, client)
	if typ != 103 {
		t.Fatalf("read: type %d", typ)
	}
	if got, _ := str(body[4:]); got != string(data) {
		t.Errorf("read %d bytes back, want the %d written", len(got), len(data))
	}
	if n := ww.writes - before; n != 2 {
		t.Errorf("a write and a read took %d messages from the server, want 2", n)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
		t.Errorf("file on disk: %d bytes, %v", len(got), err)
	}
	send(sftpMsg(4, uint32(12), handle)) // CLOSE
	readMsg(t, client)
	client.Close()
	if err := <-served; err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("serve: %v", err)
	}
}

// FuzzSFTPConnRead: whatever a client sends, the shim hands pkg/sftp the
// same bytes less each well-formed limits request, answers each of those,
// and never reads more than the client sent.
func FuzzSFTPConnRead(f *testing.F) {
	f.Add(append(sftpMsg(1, uint32(3)), sftpMsg(sftpExtended, uint32(1), limitsExtension)...))
	f.Add(sftpMsg(sftpExtended, uint32(2), "statvfs@openssh.com", "/"))
	f.Add(append(sftpMsg(6, uint32(3), "h", uint64(0), "data"), 0, 0, 0, 9, sftpExtended))
	f.Add([]byte{0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		var wantPass, wantOut []byte
		for rest := in; len(rest) > 0; {
			if len(rest) < 5 {
				wantPass = append(wantPass, rest...)
				break
			}
			size := uint64(binary.BigEndian.Uint32(rest)) + 4
			if size < 5 {
				size = 5
			}
			whole := size <= uint64(len(rest))
			if whole && rest[4] == sftpExtended && size-4 <= 1024 {
				if id, name, ok := parseExtended(rest[5:size]); ok && name == limitsExtension {
					wantOut = append(wantOut, limitsReply(id)...)
					rest = rest[size:]
					continue
				}
			}
			if !whole {
				wantPass = append(wantPass, rest...)
				break
			}
			wantPass = append(wantPass, rest[:size]...)
			rest = rest[size:]
		}
		var out bytes.Buffer
		c := newSFTPConn(struct {
			io.Reader
			io.Writer
			io.Closer
		}{bytes.NewReader(in), &out, io.NopCloser(nil)})
		got, _ := io.ReadAll(c)
		if !bytes.Equal(got, wantPass) {
			t.Errorf("passed on %x, want %x", got, wantPass)
		}
		if !bytes.Equal(out.Bytes(), wantOut) {
			t.Errorf("answered %x, want %x", out.Bytes(), wantOut)
		}
	})
}
