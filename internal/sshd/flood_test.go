package sshd_test

import (
	"bufio"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/g8os/boot/tests/testenv"
)

// TestOperatorLogsInDuringAFlood is issue 16.3: one host holding hundreds of
// idle TCP connections must not lock operators out of the node. The node,
// the flooding host and the operator's host are three network namespaces;
// the operator uses the real OpenSSH client while the flood goes on.
func TestOperatorLogsInDuringAFlood(t *testing.T) {
	requireClients(t)
	tp := testenv.NewTopology(t)
	node, attacker, operator := tp.Host("node"), tp.Host("atk"), tp.Host("op")
	tp.Link(node, "to-atk", attacker, "eth0")
	tp.Link(node, "to-op", operator, "eth0")
	node.Addr("to-atk", "10.216.1.1/24")
	attacker.Addr("eth0", "10.216.1.2/24")
	node.Addr("to-op", "10.216.2.1/24")
	operator.Addr("eth0", "10.216.2.2/24")

	keys := testenv.NewSSHKeys(t)
	d := startSSHDIn(t, node, keys, "--listen", "0.0.0.0:2222", "--banner-timeout", "3s")
	const viaAttacker, viaOperator = "10.216.1.1:2222", "10.216.2.1:2222"
	keys.TrustHost(t, viaOperator)

	login := func() (time.Duration, result) {
		ssh := keys.SSH(viaOperator, "", "echo fine")
		cmd := operator.Command(context.Background(), "ssh", ssh.Args[1:]...)
		start := time.Now()
		r := run(t, cmd, "")
		return time.Since(start), r
	}
	const logins = 5
	median := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }

	var quiet []time.Duration
	for range logins {
		took, r := login()
		if r.code != 0 || r.stdout != "fine\n" {
			t.Fatalf("login before the flood: %+v", r)
		}
		quiet = append(quiet, took)
	}

	// The flood: 300 connections that never send a byte, each redialled
	// (after a pause) as soon as the server closes it, as a patient
	// attacker would.
	const flooders = 300
	var open, dialled atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range flooders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := dialFrom(attacker, viaAttacker, 5*time.Second)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				dialled.Add(1)
				open.Add(1)
				closed := make(chan struct{})
				go func() {
					// Read until the server hangs up; the banner it sends is
					// ignored, nothing is ever written.
					_, _ = bufio.NewReader(c).WriteTo(discard{})
					close(closed)
				}()
				select {
				case <-stop:
					c.Close()
					<-closed
					open.Add(-1)
					return
				case <-closed:
					c.Close()
					open.Add(-1)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}()
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	waitFor(t, 30*time.Second, "the flood to hold its connections", func() bool { return dialled.Load() >= flooders })
	time.Sleep(time.Second)

	var flooded []time.Duration
	for i := range logins {
		took, r := login()
		if r.code != 0 || r.stdout != "fine\n" {
			t.Fatalf("login %d during the flood (%d connections from %s open): %+v", i, open.Load(), attacker.Name, r)
		}
		flooded = append(flooded, took)
	}
	q, f := median(quiet), median(flooded)
	t.Logf("| sshd: operator login (ssh true) during a 300-connection flood from one host, median of %d | %.1f ms | %.1f ms quiet | %.2fx | login succeeds |",
		logins, ms(f), ms(q), float64(f)/float64(q))

	// The limits that kept the door open did their job and said so.
	d.waitLog("too many unauthenticated connections from this source")
	d.waitLog("no SSH version string from the client within the banner timeout")
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
