package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Script is the testing.TB the fixtures need, for a program (make demo, the
// boot benchmark): failures print, clean up and exit 1; Close runs the
// registered cleanups. Methods the fixtures do not call are left to the
// embedded nil interface.
type Script struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	base     string
	name     string
	n        int
	once     sync.Once
}

// NewScript starts a script whose temporary directories live under one
// base directory, removed by Close.
func NewScript(name string) *Script {
	base, err := os.MkdirTemp("", "g8os-"+name+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	return &Script{base: base, name: name}
}

func (s *Script) Name() string { return s.name }
func (s *Script) Helper()      {}
func (s *Script) Log(a ...any) { fmt.Fprintln(os.Stderr, a...) }
func (s *Script) Logf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, f+"\n", a...)
}
func (s *Script) Error(a ...any)            { s.fail(); s.Log(a...) }
func (s *Script) Errorf(f string, a ...any) { s.fail(); s.Logf(f, a...) }
func (s *Script) Fatal(a ...any)            { s.Error(a...); s.FailNow() }
func (s *Script) Fatalf(f string, a ...any) { s.Errorf(f, a...); s.FailNow() }
func (s *Script) Fail()                     { s.fail() }
func (s *Script) Skip(a ...any)             { s.Fatal(a...) }
func (s *Script) Skipf(f string, a ...any)  { s.Fatalf(f, a...) }
func (s *Script) FailNow() {
	fmt.Fprintln(os.Stderr, s.name+": failed; cleaning up")
	s.Close()
	os.Exit(1)
}

func (s *Script) fail() {
	s.mu.Lock()
	s.failed = true
	s.mu.Unlock()
}

func (s *Script) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

func (s *Script) Cleanup(f func()) {
	s.mu.Lock()
	s.cleanups = append(s.cleanups, f)
	s.mu.Unlock()
}

func (s *Script) TempDir() string {
	s.mu.Lock()
	s.n++
	n := s.n
	s.mu.Unlock()
	d := filepath.Join(s.base, fmt.Sprint(n))
	if err := os.MkdirAll(d, 0o755); err != nil {
		s.Fatal(err)
	}
	return d
}

// Close runs the registered cleanups, last first, once, and removes the
// binaries and temporary directories.
func (s *Script) Close() {
	s.once.Do(func() {
		for {
			s.mu.Lock()
			if len(s.cleanups) == 0 {
				s.mu.Unlock()
				break
			}
			f := s.cleanups[len(s.cleanups)-1]
			s.cleanups = s.cleanups[:len(s.cleanups)-1]
			s.mu.Unlock()
			f()
		}
		removeBinaries()
		os.RemoveAll(s.base)
	})
}
