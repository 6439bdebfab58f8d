package sshd

import (
	"net"
	"strconv"
	"sync"
	"time"

	glider "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// handleDirectTCPIP serves local forwarding (ssh -L, ssh -W; RFC 4254
// section 7.2). Unlike gliderlabs' handler it half-closes: the client's EOF
// becomes a TCP FIN and the reply still flows back, which request/response
// protocols over `ssh -W` depend on.
func (s *Server) handleDirectTCPIP(_ *glider.Server, _ *gossh.ServerConn, nc gossh.NewChannel, ctx glider.Context) {
	var d struct {
		DestAddr   string
		DestPort   uint32
		OriginAddr string
		OriginPort uint32
	}
	if err := gossh.Unmarshal(nc.ExtraData(), &d); err != nil {
		nc.Reject(gossh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	if !s.allowLocalForward(ctx, d.DestAddr, d.DestPort) {
		nc.Reject(gossh.Prohibited, "port forwarding is not permitted")
		return
	}
	dialer := net.Dialer{Timeout: 10 * time.Second}
	tc, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(d.DestAddr, strconv.FormatUint(uint64(d.DestPort), 10)))
	if err != nil {
		nc.Reject(gossh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		tc.Close()
		return
	}
	go gossh.DiscardRequests(reqs)
	st := connStateOf(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		relay(tc, ch, st)
		if hc, ok := tc.(*net.TCPConn); ok {
			_ = hc.CloseWrite()
		}
	}()
	go func() {
		defer wg.Done()
		relay(ch, tc, st)
		_ = ch.CloseWrite()
	}()
	wg.Wait()
	ch.Close()
	tc.Close()
}

type readWriter interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
}

func relay(dst, src readWriter, st *connState) {
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if st != nil {
				st.touch()
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
