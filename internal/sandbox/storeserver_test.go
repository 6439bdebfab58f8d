package sandbox

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// storeServer is a real HTTPS store with the controller's semantics
// (GET/HEAD/PUT <base>/<hex>, PUT needs the admin bearer token and must
// hash to its name) over a DirStore directory. It counts GETs per blob and
// can serve a corrupt blob or go away and come back on the same address.
type storeServer struct {
	t     testing.TB
	dir   *DirStore
	token string
	addr  string
	srv   *httptest.Server
	pool  *x509.CertPool

	mu      sync.Mutex
	gets    map[string]int
	corrupt map[string]bool
	// auths counts requests per method that carried an Authorization
	// header; headNeedsAuth makes HEAD answer 401 without the admin token,
	// as the controller does for a client without a node certificate.
	auths         map[string]int
	headNeedsAuth bool
	gate          chan struct{} // while set, GETs wait for it to close
}

func newStoreServer(t testing.TB, dir string) *storeServer {
	s := &storeServer{t: t, dir: &DirStore{Root: dir}, token: "admin-secret", gets: map[string]int{}, corrupt: map[string]bool{}, auths: map[string]int{}}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *storeServer) start() {
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	// The port may linger briefly after stop.
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("store server: %v", err)
	}
	s.addr = ln.Addr().String()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	srv.Listener = ln
	srv.StartTLS()
	s.mu.Lock()
	s.srv = srv
	if s.pool == nil {
		s.pool = x509.NewCertPool()
		s.pool.AddCert(srv.Certificate())
	}
	s.mu.Unlock()
}

func (s *storeServer) stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.CloseClientConnections()
		srv.Close()
	}
}

// URL is the store's base, as in fs.toml.
func (s *storeServer) URL() string { return "https://" + s.addr + "/v1/store" }

// TLS trusts the server's certificate (httptest uses one fixed certificate,
// so it stays valid across stop/start).
func (s *storeServer) TLS() *tls.Config {
	return &tls.Config{RootCAs: s.pool}
}

func (s *storeServer) client(token string) *HTTPStore {
	st, err := NewHTTPStore(s.URL(), s.TLS())
	if err != nil {
		s.t.Fatal(err)
	}
	st.Token = token
	return st
}

func (s *storeServer) getCount(h Hash) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[h.String()]
}

func (s *storeServer) totalGets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.gets {
		n += c
	}
	return n
}

func (s *storeServer) authCount(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.auths[method]
}

func (s *storeServer) resetCounts() {
	s.mu.Lock()
	s.gets = map[string]int{}
	s.mu.Unlock()
}

// hold makes GETs wait until the returned function is called.
func (s *storeServer) hold() (release func()) {
	gate := make(chan struct{})
	s.mu.Lock()
	s.gate = gate
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.gate = nil
		s.mu.Unlock()
		close(gate)
	}
}

func (s *storeServer) setCorrupt(h Hash, on bool) {
	s.mu.Lock()
	s.corrupt[h.String()] = on
	s.mu.Unlock()
}

func (s *storeServer) serve(w http.ResponseWriter, r *http.Request) {
	hex, ok := strings.CutPrefix(r.URL.Path, "/v1/store/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	h, err := ParseHash(hex)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	if r.Header.Get("Authorization") != "" {
		s.auths[r.Method]++
	}
	needAuth := s.headNeedsAuth && r.Method == http.MethodHead
	s.mu.Unlock()
	if needAuth && r.Header.Get("Authorization") != "Bearer "+s.token {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		data, err := s.dir.Get(r.Context(), h, 1<<30)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if r.Method == http.MethodGet {
			s.mu.Lock()
			s.gets[hex]++
			bad := s.corrupt[hex]
			gate := s.gate
			s.mu.Unlock()
			if gate != nil {
				select {
				case <-gate:
				case <-r.Context().Done():
					return
				}
			}
			if bad {
				data = append([]byte(nil), data...)
				data[len(data)/2] ^= 0x40
			}
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(data)
	case http.MethodPut:
		if r.Header.Get("Authorization") != "Bearer "+s.token {
			http.Error(w, "admin token required", http.StatusUnauthorized)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		if HashOf(body) != h {
			http.Error(w, "body does not hash to its name", http.StatusBadRequest)
			return
		}
		if err := s.dir.Put(r.Context(), h, body); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}
