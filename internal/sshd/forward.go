package sshd

import (
	"net"
	"strconv"
	"sync"
	"time"

	glider "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/g8os/boot/internal/sd"
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
	splice(ch, tc, connStateOf(ctx))
}

// splice relays a channel and a TCP connection both ways, passing each
// side's EOF on as a half-close, and closes both when both are done.
func splice(ch gossh.Channel, tc net.Conn, st *connState) {
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

// handleTCPIPForward serves remote forwarding (ssh -R; RFC 4254 section
// 7.1): "tcpip-forward" binds a listener on the node whose connections come
// back to the client as "forwarded-tcpip" channels. Listeners belong to
// their connection (gliderlabs keeps one map for all connections, so one
// client could cancel another's forward) and close with it.
func (s *Server) handleTCPIPForward(ctx glider.Context, _ *glider.Server, req *gossh.Request) (bool, []byte) {
	st := connStateOf(ctx)
	sc, _ := ctx.Value(glider.ContextKeyConn).(*gossh.ServerConn)
	var p struct {
		BindAddr string
		BindPort uint32
	}
	if st == nil || sc == nil || gossh.Unmarshal(req.Payload, &p) != nil || p.BindPort > 65535 {
		return false, nil
	}
	if req.Type == "cancel-tcpip-forward" {
		key := net.JoinHostPort(p.BindAddr, strconv.FormatUint(uint64(p.BindPort), 10))
		st.mu.Lock()
		ln := st.forwards[key]
		delete(st.forwards, key)
		st.mu.Unlock()
		if ln == nil {
			return false, nil
		}
		ln.Close()
		return true, nil
	}
	if !s.allowRemoteForward(ctx, p.BindAddr, p.BindPort) {
		return false, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(p.BindAddr, strconv.FormatUint(uint64(p.BindPort), 10)))
	if err != nil {
		s.log.Info("remote forward not bound", sd.SSHDForward.Attr(), "remote", st.remote, "user", st.userName(), "error", err.Error())
		return false, nil
	}
	port := uint32(ln.Addr().(*net.TCPAddr).Port)
	st.mu.Lock()
	if st.forwards == nil {
		st.forwards = map[string]net.Listener{}
	}
	st.forwards[net.JoinHostPort(p.BindAddr, strconv.FormatUint(uint64(port), 10))] = ln
	st.mu.Unlock()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				oa, _ := c.RemoteAddr().(*net.TCPAddr)
				var origin struct {
					IP   string
					Port uint32
				}
				if oa != nil {
					origin.IP, origin.Port = oa.IP.String(), uint32(oa.Port)
				}
				ch, reqs, err := sc.OpenChannel("forwarded-tcpip", gossh.Marshal(&struct {
					DestAddr   string
					DestPort   uint32
					OriginAddr string
					OriginPort uint32
				}{p.BindAddr, port, origin.IP, origin.Port}))
				if err != nil {
					c.Close()
					return
				}
				go gossh.DiscardRequests(reqs)
				splice(ch, c, st)
			}()
		}
	}()
	if p.BindPort == 0 {
		// Only a request for "any port" is answered with the port chosen.
		return true, gossh.Marshal(&struct{ Port uint32 }{port})
	}
	return true, nil
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
