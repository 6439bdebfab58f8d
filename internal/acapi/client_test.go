package acapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The controller API client (and so netup's probe and every phase that
// talks to the controller) refuses a redirect from https to plain http,
// and follows at most MaxRedirects https ones.
func TestClientRedirectPolicy(t *testing.T) {
	var plainHits int
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		plainHits++
		w.Write([]byte(`{"status":"ok"}`))
	}))
	defer plain.Close()
	down := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer down.Close()
	var hops int
	var loop *httptest.Server
	loop = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hops++
		http.Redirect(w, r, loop.URL+r.URL.Path+"x", http.StatusFound)
	}))
	defer loop.Close()
	var okHops int
	var fine *httptest.Server
	fine = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if okHops < MaxRedirects {
			okHops++
			http.Redirect(w, r, fine.URL+"/v1/health", http.StatusFound)
			return
		}
		w.Write([]byte(`{}`))
	}))
	defer fine.Close()

	for _, c := range []struct {
		srv  *httptest.Server
		want string
	}{
		{down, "only https"},
		{loop, "redirects"},
		{fine, ""},
	} {
		cl, err := NewClient(c.srv.URL, c.srv.Client().Transport.(*http.Transport).TLSClientConfig, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		err = cl.Do(context.Background(), http.MethodGet, "/v1/health", nil, nil)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%d https redirects: %v", MaxRedirects, err)
		case c.want != "" && (!errors.Is(err, ErrRedirect) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want the redirect refused (%s)", c.srv.URL, err, c.want)
		}
	}
	if plainHits != 0 {
		t.Errorf("the plain http server was asked %d times", plainHits)
	}
	if hops > MaxRedirects+1 {
		t.Errorf("followed %d redirects", hops-1)
	}
}
