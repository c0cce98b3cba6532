// Package e2e holds end-to-end tests that run the real mxbox binary as a
// child process: crash safety under SIGKILL, a full disk, clean shutdown.
package e2e

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxbox/mxbox/storage"
	"github.com/mxbox/mxbox/test/harness"
)

// message makes a distinct body so byte-identical checks catch mix-ups.
func message(sender, n int, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: sender%d@example.org\r\nTo: rcpt@example.com\r\nSubject: crash test %d/%d\r\n\r\n", sender, sender, n)
	r := rand.New(rand.NewPCG(uint64(sender), uint64(n)))
	for b.Len() < size {
		line := make([]byte, 60+r.IntN(16))
		for i := range line {
			line[i] = byte('a' + r.IntN(26))
		}
		if r.IntN(10) == 0 {
			line[0] = '.' // exercise dot-stuffing
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

func openSpool(t *testing.T, dataDir string) *storage.Spool {
	t.Helper()
	s, err := storage.Open(filepath.Join(dataDir, "spool"), storage.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), GCInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCrashUnderLoadLosesNoAcknowledgedMessage is the store-and-forward
// promise: every message that got 250 survives a SIGKILL of the daemon at an
// arbitrary moment under load, byte for byte.
func TestCrashUnderLoadLosesNoAcknowledgedMessage(t *testing.T) {
	dir := t.TempDir()
	d := harness.Start(t, dir, harness.Config(dir, "", "", ""))
	acked := map[string][]byte{} // queue id -> body as sent
	var mu sync.Mutex
	const rounds, senders = 5, 8
	for round := 0; round < rounds; round++ {
		addr := d.Addrs["smtp"]
		var wg sync.WaitGroup
		var sent atomic.Int64
		stop := make(chan struct{})
		for s := 0; s < senders; s++ {
			wg.Add(1)
			go func(s int) {
				defer wg.Done()
				// Bounded: at most 400 messages per sender per round.
				for n := 0; n < 400; n++ {
					select {
					case <-stop:
						return
					default:
					}
					body := message(round*senders+s, n, 2048+(n%5)*1500)
					rep, err := harness.SendMail(addr, "a@example.org", []string{"b@example.com"}, body)
					if id, ok := harness.QueuedID(rep); ok {
						mu.Lock()
						acked[id] = body
						mu.Unlock()
						sent.Add(1)
					}
					if err != nil {
						return // the daemon died under us: expected
					}
				}
			}(s)
		}
		// Kill at a different moment each round, once mail is flowing.
		deadline := time.Now().Add(20 * time.Second)
		for sent.Load() < int64(20+round*15) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		d.Kill()
		close(stop)
		wg.Wait()
		if sent.Load() == 0 {
			t.Fatalf("round %d: no message acknowledged before the kill\n%s", round, d.Log())
		}
		d.Restart()
	}
	d.Stop(30 * time.Second)

	s := openSpool(t, dir)
	defer s.Close()
	for id, want := range acked {
		env, got, err := s.Get(id)
		if err != nil {
			t.Fatalf("acknowledged message %s lost: %v", id, err)
		}
		// The spool holds our Received header (naming the id) followed by
		// exactly what the client sent, unstuffed.
		if !bytes.HasSuffix(got, want) {
			t.Fatalf("message %s differs from what was sent", id)
		}
		if !strings.Contains(string(got[:len(got)-len(want)]), "id "+id) {
			t.Fatalf("message %s: Received header does not name the queue id", id)
		}
		if env.From != "a@example.org" || len(env.Recipients) != 1 || env.Recipients[0].Addr != "b@example.com" {
			t.Fatalf("message %s: envelope %+v", id, env)
		}
	}
	t.Logf("%d acknowledged messages over %d SIGKILL rounds, all present and byte-identical", len(acked), rounds)
}

// TestSIGTERMFinishesTransactionInFlight: a client in the middle of DATA when
// the daemon is told to stop still gets its 250, new connections get 421,
// and the message is in the spool after the clean exit.
func TestSIGTERMFinishesTransactionInFlight(t *testing.T) {
	dir := t.TempDir()
	d := harness.Start(t, dir, harness.Config(dir, "", "", ""))
	c, _, err := harness.Dial(d.Addrs["smtp"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, cmd := range []string{"EHLO c.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>", "DATA"} {
		if rep, err := c.Cmd(cmd); err != nil || (rep[0] != '2' && rep[0] != '3') {
			t.Fatalf("%s: %q %v", cmd, rep, err)
		}
	}
	c.Send("Subject: in flight\r\n\r\nfirst half\r\n")
	stopped := make(chan struct{})
	go func() { d.Stop(30 * time.Second); close(stopped) }()
	// Wait until the daemon is draining: a new connection is refused with 421.
	var rep string
	for i := 0; i < 200; i++ {
		time.Sleep(10 * time.Millisecond)
		c2, greet, err := harness.Dial(d.Addrs["smtp"])
		if err != nil {
			continue
		}
		c2.Close()
		if strings.HasPrefix(greet, "421") {
			rep = greet
			break
		}
	}
	if !strings.HasPrefix(rep, "421 4.3.2") {
		t.Fatalf("new connection while draining got %q, want 421 4.3.2", rep)
	}
	c.Send("second half\r\n.\r\n")
	final, err := c.Reply()
	id, ok := harness.QueuedID(final)
	if err != nil || !ok {
		t.Fatalf("in-flight message: %q %v", final, err)
	}
	<-stopped
	s := openSpool(t, dir)
	defer s.Close()
	if _, body, err := s.Get(id); err != nil || !bytes.HasSuffix(body, []byte("first half\r\nsecond half\r\n")) {
		t.Fatalf("in-flight message %s not stored intact: %v %q", id, err, body)
	}
	if !strings.Contains(d.Log(), "mxbox stopped") {
		t.Fatalf("no clean stop in log:\n%s", d.Log())
	}
}

// TestQueueListCLI: `mxbox queue` hold/release/show/delete work through the
// admin socket, and `queue list --json` works while the daemon runs and from
// the spool after it stopped.
func TestQueueListCLI(t *testing.T) {
	dir := t.TempDir()
	d := harness.Start(t, dir, harness.Config(dir, "", "", ""))
	rep, err := harness.SendMail(d.Addrs["smtp"], "a@example.org", []string{"b@example.com", "c@example.com"}, []byte("Subject: x\r\n\r\nhello\r\n"))
	id, ok := harness.QueuedID(rep)
	if err != nil || !ok {
		t.Fatalf("send: %q %v", rep, err)
	}
	// Operator tools through the admin socket (postsuper -h / -H / -d).
	runCLI(t, "queue", "hold", "-config", d.ConfigPath, id)
	if out := runCLI(t, "queue", "list", "-config", d.ConfigPath, "-state", "held"); !strings.Contains(out, id) {
		t.Fatalf("held message not listed as held:\n%s", out)
	}
	runCLI(t, "queue", "release", "-config", d.ConfigPath, id)
	if out := runCLI(t, "queue", "show", "-config", d.ConfigPath, id); !strings.Contains(out, `"c@example.com"`) || strings.Contains(out, `"held":true`) {
		t.Fatalf("show after release:\n%s", out)
	}
	rep, _ = harness.SendMail(d.Addrs["smtp"], "x@example.org", []string{"y@example.com"}, []byte("Subject: y\r\n\r\nbye\r\n"))
	doomed, _ := harness.QueuedID(rep)
	runCLI(t, "queue", "delete", "-config", d.ConfigPath, doomed)
	if out := runCLI(t, "queue", "list", "-config", d.ConfigPath); strings.Contains(out, doomed) {
		t.Fatalf("deleted message still listed:\n%s", out)
	}
	for _, phase := range []string{"running", "stopped"} {
		out := runCLI(t, "queue", "list", "-config", d.ConfigPath, "--json")
		if !strings.Contains(out, `"id": "`+id+`"`) || !strings.Contains(out, `"c@example.com"`) {
			t.Fatalf("%s: queue list does not show %s:\n%s", phase, id, out)
		}
		if phase == "running" {
			d.Stop(30 * time.Second)
		}
	}
}
