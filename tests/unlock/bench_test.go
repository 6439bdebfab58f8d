//go:build bench

package unlock_test

import (
	"encoding/hex"
	"fmt"
	"os/exec"
	"sort"
	"testing"
	"time"
)

// TestBenchUnlock times g8-unlock from start to READY=1 on a later boot
// (key fetch + mount + refresh + marker read-back) beside the same work by
// hand in the same run: one HTTPS unlock request with curl plus the tool's
// own foreground mount until it shows in the mount table. Median of
// 5 (encfs) and 11 (gocryptfs) rounds: single runs are noisy. Run by bench/unlock.sh.
func TestBenchUnlock(t *testing.T) {
	for _, be := range backends {
		// The bench asks more often than a booting node would.
		r := newRig(t, be, "--unlock-rate", "100", "--unlock-burst", "100")
		// /run is a tmpfs on a real node; the state file's fsyncs cost
		// nothing there.
		if out, err := exec.Command("mount", "-t", "tmpfs", "g8-bench-run", r.StateDir).CombinedOutput(); err != nil {
			t.Fatalf("tmpfs at %s: %v: %s", r.StateDir, err, out)
		}
		t.Cleanup(func() { exec.Command("umount", r.StateDir).Run() })
		r.writeNet(t)
		r.AC.ApproveMAC(t, r.MAC)
		u := r.start(t)
		u.waitReady(t) // first boot: enroll, not timed
		r.stop(t, u)
		password := hex.EncodeToString(r.nodeKey(t))

		var g8, hand, rtt []time.Duration
		// gocryptfs mounts in tens of milliseconds, where scheduling noise
		// on a shared machine matters most: more rounds.
		rounds := map[string]int{"encfs": 5, "gocryptfs": 11}[be]
		for range rounds {
			start := time.Now()
			r.nodeKey(t) // one HTTPS round trip from the node's namespace
			rtt = append(rtt, time.Since(start))
			cmd := r.handMount(t, password)
			hand = append(hand, time.Since(start))
			if err := unmountIfMounted(r.Mount); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()

			start = time.Now()
			u := r.start(t)
			u.waitReady(t)
			at, _ := u.Notify.When("READY=1")
			g8 = append(g8, at.Sub(start))
			r.stop(t, u)
		}
		g, h := median(g8), median(hand)
		fmt.Printf("| unlock start→READY, %s (later boot) | %v | %v (curl unlock %v + %s by hand) | %.2f | ≤ 1.10 |\n",
			be, g.Round(time.Millisecond), h.Round(time.Millisecond), median(rtt).Round(time.Millisecond), be, float64(g)/float64(h))
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
