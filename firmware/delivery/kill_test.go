package delivery

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// TestSIGKILLDuringDeliveryLosesNothing runs the real daemon binary, kills
// it with SIGKILL while it delivers to a slow upstream, restarts it on the
// same spool, and checks every accepted message reached the upstream at
// least once (duplicates are allowed: a kill between the upstream's 250
// and our bookkeeping repeats a message, never drops it).
func TestSIGKILLDuringDeliveryLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "mxbox")
	build := exec.Command("go", "build", "-o", bin, "github.com/mxbox/mxbox/firmware/cmd/mxbox")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build daemon: %v\n%s", err, out)
	}
	sink := startSink(t, "127.0.0.2", sinkOpts{delay: 20 * time.Millisecond})
	smtpPort := freePort(t, "127.0.0.1")
	cfgPath := filepath.Join(dir, "mxbox.toml")
	cfg := fmt.Sprintf(`hostname = "mxbox.test"
data_dir = %q
log_level = "warn"
[smtp]
listen = "127.0.0.1:%d"
submission_listen = ""
[delivery]
smarthosts = [%q]
tls = "none"
concurrency = 4
hop_concurrency = 4
connect_timeout = "1s"
[dns]
listen = ""
[web]
listen = ""
`, filepath.Join(dir, "data"), smtpPort, sink.Addr)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, _ := os.Create(filepath.Join(dir, "daemon.log"))
	defer logf.Close()
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "serve", "-config", cfgPath)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitFor(t, 10*time.Second, "daemon SMTP listener", func() bool {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", smtpPort), 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		return cmd
	}
	daemon := start()

	const n = 300
	c, err := smtp.Dial(fmt.Sprintf("127.0.0.1:%d", smtpPort))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		body := fmt.Sprintf("From: <a@example.org>\r\nTo: <b@example.net>\r\nMessage-ID: <kill-%d@test>\r\nSubject: %d\r\n\r\nbody %d\r\n", i, i, i)
		if err := c.SendMail("a@example.org", []string{"b@example.net"}, strings.NewReader(body)); err != nil {
			t.Fatalf("message %d not accepted: %v", i, err)
		}
	}
	c.Quit()

	// Kill while delivery is in full swing.
	sink.waitMessages(t, 40, 20*time.Second)
	if err := daemon.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	daemon.Wait()
	before := len(sink.Messages())
	if before >= n {
		t.Fatalf("all %d delivered before the kill; the test did not test anything", n)
	}

	daemon = start()
	re := regexp.MustCompile(`Message-ID: <kill-(\d+)@test>`)
	seen := map[string]int{}
	waitFor(t, 60*time.Second, "every message delivered after restart", func() bool {
		clear(seen)
		for _, m := range sink.Messages() {
			if g := re.FindSubmatch(m.Body); g != nil {
				seen[string(g[1])]++
			}
		}
		return len(seen) == n
	})
	dups := 0
	for _, k := range seen {
		dups += k - 1
	}
	t.Logf("%d delivered before SIGKILL, %d after restart, %d duplicates, 0 lost", before, len(sink.Messages())-before, dups)
	daemon.Process.Signal(syscall.SIGTERM)
	daemon.Wait()
}
