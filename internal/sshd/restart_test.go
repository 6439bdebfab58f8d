package sshd_test

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/g8os/boot/tests/testenv"
)

// TestSessionsOutliveTheListener is issue 15.2: every connection has its
// own process, so a restart of g8-sshd (SIGTERM outside a systemd stop, or
// even SIGKILL) ends only the listener. A looping command and an
// interactive shell, both through the real OpenSSH client, keep working
// across two listener generations.
func TestSessionsOutliveTheListener(t *testing.T) {
	requireClients(t)
	keys := testenv.NewSSHKeys(t)
	d1 := startSSHD(t, keys)

	var ticks testenv.SyncBuffer
	loop := keys.SSH(d1.addr, "", `i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.2; done`)
	loop.Stdout = &ticks
	if err := loop.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = loop.Process.Kill(); _ = loop.Wait() })
	shell := startInPTY(t, keys.SSH(d1.addr, "", "-tt"), 24, 80)
	send(t, shell, "echo before-$((6*7))\n")
	shell.wait(t, "before-42")
	count := func() int { return strings.Count(ticks.String(), "tick-") }
	waitFor(t, 10*time.Second, "the loop to print", func() bool { return count() >= 3 })

	// A restart: SIGTERM without a systemd stop job. The listener goes at
	// once (no grace to wait for) and says the connections stay.
	if err := d1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !d1.exited(10 * time.Second) {
		t.Fatal("listener still running 10s after SIGTERM")
	}
	d1.waitLog("connections keep running")
	n := count()
	waitFor(t, 10*time.Second, "ticks after the listener ended", func() bool { return count() >= n+5 })

	// The next listener on the same address; a new login works and the old
	// shell still answers.
	d2 := startSSHDIn(t, nil, keys, "--listen", d1.addr)
	if r := run(t, keys.SSH(d2.addr, "", "echo new-login"), ""); r.code != 0 || r.stdout != "new-login\n" {
		t.Fatalf("login after the restart: %+v", r)
	}
	send(t, shell, "echo after-$((6*7+1))\n")
	shell.wait(t, "after-43")

	// A crash of the listener (kill -9) does not take them either.
	if err := d2.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	d2.exited(10 * time.Second)
	n = count()
	waitFor(t, 10*time.Second, "ticks after kill -9 of the listener", func() bool { return count() >= n+5 })
	send(t, shell, "echo still-$((6*7+2)); exit\n")
	shell.wait(t, "still-44")
	if code := shell.exitCode(t); code != 0 {
		t.Errorf("interactive shell exit %d", code)
	}
	if err := loop.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

func send(t *testing.T, c *ptyClient, text string) {
	t.Helper()
	if _, err := c.ptmx.WriteString(text); err != nil {
		t.Fatal(err)
	}
}
