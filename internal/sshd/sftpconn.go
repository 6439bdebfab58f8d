package sshd

import (
	"encoding/binary"
	"errors"
	"io"
	"sync"

	"github.com/pkg/sftp"
)

// SFTP message sizes. pkg/sftp accepts requests up to 256 KiB (its
// maxMsgLength); reads and writes of 255 KiB leave room for the headers,
// as OpenSSH's sftp-server does (SFTP_MAX_MSG_LENGTH - 1024).
const (
	sftpMaxMessage = 256 << 10
	sftpMaxData    = sftpMaxMessage - 1024
)

// SFTP message types (draft-ietf-secsh-filexfer-02) the shim looks at.
const (
	sftpVersion       = 2
	sftpExtended      = 200
	sftpExtendedReply = 201
	limitsExtension   = "limits@openssh.com"
)

// newSFTPServer is pkg/sftp's server on rwc, with reads as large as the
// client asks for (up to sftpMaxData), its buffers reused, and the shim
// below in between.
func newSFTPServer(rwc io.ReadWriteCloser, opts ...sftp.ServerOption) (*sftp.Server, error) {
	opts = append(opts, sftp.WithMaxTxPacket(sftpMaxData), sftp.WithAllocator())
	return sftp.NewServer(newSFTPConn(rwc), opts...)
}

// sftpConn sits between the client and pkg/sftp's server for speed:
//
//   - It answers limits@openssh.com (and announces it in the version
//     message), which pkg/sftp does not know: told the server's limits,
//     OpenSSH's sftp and scp read and write 255 KiB per request instead of
//     32 KiB, as they do with OpenSSH's own server: an eighth of the
//     requests, responses and goroutine hand-offs, and half the channel
//     packets of a download (a 32 KiB read's reply is 32 KiB and 13 bytes).
//   - It sends each SFTP message in one write: pkg/sftp's sendPacket
//     writes header and payload separately for some message types, and
//     every write on an SSH channel is at least one SSH packet (one more
//     encryption, MAC and system call). Its server's responses come whole
//     today; the gathering also carries the version message's rewrite.
//
// Everything else passes through untouched; request bodies are not copied.
type sftpConn struct {
	rwc io.ReadWriteCloser

	// Reading (pkg/sftp's one receiving goroutine).
	head   []byte // bytes of the current message read ahead, to hand out first
	remain uint32 // bytes of the current message still in rwc
	rerr   error

	// Writing (pkg/sftp serialises its messages; a limits reply comes from
	// the reading side).
	wmu       sync.Mutex
	out       []byte // the message being gathered
	pending   []byte // a limits reply waiting for the message in progress
	announced bool   // the version message went out, with limits@openssh.com
}

func newSFTPConn(rwc io.ReadWriteCloser) *sftpConn { return &sftpConn{rwc: rwc} }

func (c *sftpConn) Close() error { return c.rwc.Close() }

// Read hands out the client's messages, never reading past the end of the
// current one, so the next one's header can be looked at first.
func (c *sftpConn) Read(p []byte) (int, error) {
	for {
		if len(c.head) > 0 {
			n := copy(p, c.head)
			c.head = c.head[n:]
			return n, nil
		}
		if c.remain > 0 {
			if uint32(len(p)) > c.remain {
				p = p[:c.remain]
			}
			n, err := c.rwc.Read(p)
			c.remain -= uint32(n)
			if err == io.EOF && c.remain > 0 {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
		if c.rerr != nil {
			return 0, c.rerr
		}
		if err := c.next(); err != nil {
			c.rerr = err
		}
	}
}

// next reads the header of the client's next message; a limits request is
// answered here and not passed on.
func (c *sftpConn) next() error {
	var hdr [5]byte
	if n, err := io.ReadFull(c.rwc, hdr[:]); err != nil {
		if n > 0 {
			// pkg/sftp reports the truncated message itself.
			c.head = append([]byte(nil), hdr[:n]...)
		}
		return err
	}
	length := binary.BigEndian.Uint32(hdr[:4])
	if hdr[4] != sftpExtended || length == 0 || length > 1024 {
		c.head = append(c.head[:0], hdr[:]...)
		if length > 0 {
			c.remain = length - 1
		}
		return nil
	}
	msg := make([]byte, 5+length-1)
	copy(msg, hdr[:])
	if n, err := io.ReadFull(c.rwc, msg[5:]); err != nil {
		c.head = msg[:5+n]
		return err
	}
	id, name, ok := parseExtended(msg[5:])
	if !ok || name != limitsExtension {
		c.head = msg
		return nil
	}
	return c.reply(limitsReply(id))
}

// parseExtended reads an SSH_FXP_EXTENDED body: request id and name.
func parseExtended(b []byte) (uint32, string, bool) {
	if len(b) < 8 {
		return 0, "", false
	}
	id, n := binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])
	if uint64(n) > uint64(len(b)-8) {
		return 0, "", false
	}
	return id, string(b[8 : 8+n]), true
}

// limitsReply is the answer to limits@openssh.com: maximum message,
// read and write lengths, and no limit on open handles.
func limitsReply(id uint32) []byte {
	b := make([]byte, 0, 4+1+4+4*8)
	b = binary.BigEndian.AppendUint32(b, 1+4+4*8)
	b = append(b, sftpExtendedReply)
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint64(b, sftpMaxMessage)
	b = binary.BigEndian.AppendUint64(b, sftpMaxData)
	b = binary.BigEndian.AppendUint64(b, sftpMaxData)
	return binary.BigEndian.AppendUint64(b, 0)
}

func (c *sftpConn) reply(msg []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.out) > 0 {
		c.pending = append(c.pending, msg...)
		return nil
	}
	_, err := c.rwc.Write(msg)
	return err
}

var errSFTPFraming = errors.New("sftp: message shorter than its header")

// Write gathers pkg/sftp's writes into whole messages and sends each in one
// write.
func (c *sftpConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.out) == 0 && c.announced && len(p) >= 4 && int(binary.BigEndian.Uint32(p))+4 == len(p) {
		_, err := c.rwc.Write(p) // a whole message: no copy
		return len(p), err
	}
	c.out = append(c.out, p...)
	for len(c.out) >= 4 {
		size := int(binary.BigEndian.Uint32(c.out)) + 4
		if len(c.out) < size {
			break
		}
		if size < 5 {
			return len(p), errSFTPFraming
		}
		msg := c.out[:size]
		if !c.announced && msg[4] == sftpVersion {
			msg = announceLimits(msg)
			c.announced = true
		}
		if _, err := c.rwc.Write(msg); err != nil {
			return len(p), err
		}
		c.out = append(c.out[:0], c.out[size:]...)
		if len(c.pending) > 0 && len(c.out) == 0 {
			pend := c.pending
			c.pending = nil
			if _, err := c.rwc.Write(pend); err != nil {
				return len(p), err
			}
		}
	}
	if cap(c.out) > sftpMaxMessage+1024 && len(c.out) == 0 {
		c.out = nil // a one-off large message: do not keep its buffer
	}
	return len(p), nil
}

// announceLimits adds limits@openssh.com to an SSH_FXP_VERSION message.
func announceLimits(msg []byte) []byte {
	out := append([]byte(nil), msg...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(limitsExtension)))
	out = append(out, limitsExtension...)
	out = binary.BigEndian.AppendUint32(out, 1)
	out = append(out, '1')
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}
