package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mxbox/mxbox/storage"
	"github.com/mxbox/mxbox/test/harness"
)

// needRoot skips outside CI when not root; in CI a skip would hide a missing
// capability, so it fails instead.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (mount) and CI runs as root: refusing to skip")
	}
	t.Skip("needs root to mount a small tmpfs")
}

func freeBytes(t *testing.T, dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

func writeFiller(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for size > 0 {
		n := min(size, int64(len(chunk)))
		if _, err := f.Write(chunk[:n]); err != nil {
			t.Fatal(err)
		}
		size -= n
	}
}

// TestDiskFullRefusesWith452AndLosesNothing fills a small tmpfs holding the
// spool: mail is refused with 452 4.3.1 before the filesystem is full (at
// MAIL, for a too-large SIZE=, and after DATA for a message that would cross
// the reserve, leaving nothing behind), every acknowledged message survives,
// and accepting resumes once space is freed.
func TestDiskFullRefusesWith452AndLosesNothing(t *testing.T) {
	needRoot(t)
	dir := filepath.Join(t.TempDir(), "flash")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	dataDir := filepath.Join(dir, "mxbox")
	const reserve = 16 << 20
	threshold := int64(reserve + storage.Headroom)
	d := harness.Start(t, dataDir, harness.Config(dataDir, `spool_reserve = "16M"
max_message_bytes = "4M"`, "", ""))
	addr := d.Addrs["smtp"]
	acked := map[string][]byte{}
	send := func(body []byte) string {
		t.Helper()
		rep, err := harness.SendMail(addr, "a@example.org", []string{"b@example.com"}, body)
		if err != nil {
			t.Fatalf("send: %v (%q)\n%s", err, rep, d.Log())
		}
		if id, ok := harness.QueuedID(rep); ok {
			acked[id] = body
		}
		return rep
	}
	big := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\r\n"), 3<<20/69)
	msgBig := append([]byte("Subject: big\r\n\r\n"), big...)

	// 1. Leave exactly 2 MiB above the refusal threshold.
	filler1 := filepath.Join(dir, "filler1")
	writeFiller(t, filler1, freeBytes(t, dir)-threshold-2<<20)
	c, _, err := harness.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Cmd("EHLO c.test")
	if rep, _ := c.Cmd("MAIL FROM:<a@example.org> SIZE=3000000"); !strings.HasPrefix(rep, "452 4.3.1") {
		t.Fatalf("SIZE larger than free space: %q, want 452 4.3.1", rep)
	}
	c.Close()
	before := d.QueueStats(t).Messages
	if rep := send(msgBig); !strings.HasPrefix(rep, "452 4.3.1") {
		t.Fatalf("message crossing the reserve during DATA: %q, want 452 4.3.1", rep)
	}
	if after := d.QueueStats(t).Messages; after != before {
		t.Fatalf("refused message left something in the spool: %d -> %d", before, after)
	}
	if rep := send([]byte("Subject: small\r\n\r\nfits\r\n")); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("small message with room left: %q", rep)
	}

	// 2. Fill the spool itself until mail is refused.
	os.Remove(filler1)
	filler2 := filepath.Join(dir, "filler2")
	writeFiller(t, filler2, 8<<20)
	body := append([]byte("Subject: fill\r\n\r\n"), big[:69*2900]...)
	refused := ""
	for i := 0; i < 1000 && refused == ""; i++ {
		if rep := send(append([]byte{}, body...)); !strings.HasPrefix(rep, "250 ") {
			refused = rep
		}
	}
	if !strings.HasPrefix(refused, "452 4.3.1") {
		t.Fatalf("filling the spool ended with %q, want 452 4.3.1", refused)
	}
	if free := freeBytes(t, dir); free < reserve {
		t.Fatalf("free space %d fell below the reserve %d: the guard came too late", free, reserve)
	}
	// A SIZE= that does not fit is refused at MAIL; once other files take the
	// spool below the threshold, every MAIL is.
	c, _, err = harness.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Cmd("EHLO c.test")
	if rep, _ := c.Cmd(fmt.Sprintf("MAIL FROM:<a@example.org> SIZE=%d", len(body))); !strings.HasPrefix(rep, "452 4.3.1") {
		t.Fatalf("MAIL with a SIZE that does not fit: %q", rep)
	}
	filler3 := filepath.Join(dir, "filler3")
	writeFiller(t, filler3, freeBytes(t, dir)-threshold+1<<20)
	if rep, _ := c.Cmd("MAIL FROM:<a@example.org>"); !strings.HasPrefix(rep, "452 4.3.1") {
		t.Fatalf("MAIL below the reserve: %q", rep)
	}
	c.Close()

	// 3. Free space: accepting resumes.
	os.Remove(filler2)
	os.Remove(filler3)
	if rep := send(msgBig); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("after freeing space: %q", rep)
	}

	d.Stop(30 * time.Second)
	s := openSpool(t, dataDir)
	defer s.Close()
	for id, want := range acked {
		_, got, err := s.Get(id)
		if err != nil || !bytes.HasSuffix(got, want) {
			t.Fatalf("acknowledged message %s lost or changed: %v", id, err)
		}
	}
	if n := s.Stats().Messages; n != int64(len(acked)) {
		t.Fatalf("spool has %d messages, %d were acknowledged", n, len(acked))
	}
	t.Logf("%d messages acknowledged and intact; refused with %q", len(acked), refused)
}
