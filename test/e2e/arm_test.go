package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/mxbox/mxbox/test/harness"
)

// TestARMv7BinaryAcceptsMailAndSurvivesKill runs the linux/arm (GOARM=7,
// CGO_ENABLED=0) build — what the board runs — under qemu-user: Badger on a
// 32-bit address space, SIGKILL, restart, and a spool the host build can read.
func TestARMv7BinaryAcceptsMailAndSurvivesKill(t *testing.T) {
	qemu, err := exec.LookPath("qemu-arm-static")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("qemu-arm-static missing in CI (make deps installs qemu-user-static): refusing to skip")
		}
		t.Skip("qemu-arm-static not installed (apt-get install qemu-user-static)")
	}
	bin := harness.BinaryFor(t, "arm", "7")
	dir := t.TempDir()
	d := harness.StartCmd(t, dir, harness.Config(dir, "", "", ""), []string{qemu, bin})
	sent := map[string][]byte{}
	for i := 0; i < 20; i++ {
		body := []byte(fmt.Sprintf("Subject: arm %d\r\n\r\n%s\r\n", i, bytes.Repeat([]byte{'a' + byte(i)}, 3000)))
		rep, err := harness.SendMail(d.Addrs["smtp"], "a@example.org", []string{"b@example.com"}, body)
		id, ok := harness.QueuedID(rep)
		if err != nil || !ok {
			t.Fatalf("armv7 daemon: %q %v\n%s", rep, err, d.Log())
		}
		sent[id] = body
	}
	d.Kill()
	d.Restart()
	if n := d.QueueStats(t).Messages; n != int64(len(sent)) {
		t.Fatalf("armv7 daemon after SIGKILL+restart has %d messages, want %d", n, len(sent))
	}
	d.Stop(60 * time.Second)
	s := openSpool(t, dir) // host build reads the board's spool
	defer s.Close()
	for id, want := range sent {
		if _, got, err := s.Get(id); err != nil || !bytes.HasSuffix(got, want) {
			t.Fatalf("message %s from the armv7 spool: %v", id, err)
		}
	}
}
