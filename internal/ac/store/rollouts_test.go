package store

import (
	"errors"
	"testing"
)

// Rollout state survives a reopen, and of two writers that read the same
// version only the first writes.
func TestRolloutCompareAndSwap(t *testing.T) {
	forEachEngine(t, testRolloutCompareAndSwap)
}

func testRolloutCompareAndSwap(t *testing.T, newDB func() string) {
	path := newDB()
	s := open(t, path)
	v, err := s.SaveRollout(ctx, Rollout{App: "web", State: []byte(`{"spec":"a"}`)})
	if err != nil || v != 1 {
		t.Fatalf("first save: %d %v", v, err)
	}
	if _, err := s.SaveRollout(ctx, Rollout{App: "web", State: []byte(`{"spec":"b"}`)}); !errors.Is(err, ErrRolloutChanged) {
		t.Errorf("second insert: %v, want ErrRolloutChanged", err)
	}
	if v, err = s.SaveRollout(ctx, Rollout{App: "web", State: []byte(`{"spec":"c"}`), Version: 1}); err != nil || v != 2 {
		t.Fatalf("update at version 1: %d %v", v, err)
	}
	if _, err := s.SaveRollout(ctx, Rollout{App: "web", State: []byte(`{"spec":"d"}`), Version: 1}); !errors.Is(err, ErrRolloutChanged) {
		t.Errorf("stale update: %v, want ErrRolloutChanged", err)
	}
	if _, err := s.SaveRollout(ctx, Rollout{App: "web", State: []byte(`{`), Version: 2}); err == nil {
		t.Error("invalid JSON saved")
	}
	s.Close()
	s = open(t, path)
	rs, err := s.Rollouts(ctx)
	if err != nil || len(rs) != 1 || string(rs[0].State) != `{"spec":"c"}` || rs[0].Version != 2 {
		t.Errorf("after reopen: %+v %v", rs, err)
	}
}
