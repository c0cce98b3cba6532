package storage

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

// rssFileKB reads this process's resident file-backed memory.
func rssFileKB(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "RssFile:" {
			var n int64
			for _, c := range f[1] {
				n = n*10 + int64(c-'0')
			}
			return n
		}
	}
	t.Skip("no RssFile in /proc/self/status")
	return 0
}

// TestTrimMappingsReleasesSpoolPages: after tens of MB of mail, the pages of
// Badger's sealed value-log files leave our RSS, and the mail is still
// readable (paged back in from the file).
func TestTrimMappingsReleasesSpoolPages(t *testing.T) {
	if testing.Short() {
		t.Skip("writes ~40 MB")
	}
	s, err := Open(t.TempDir(), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), NoSync: true, GCInterval: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := make([]byte, 64<<10)
	for i := range body {
		body[i] = byte(i)
	}
	var ids []string
	for i := 0; i < 640; i++ { // 40 MB: two sealed 16 MB value-log files at least
		id, err := s.Put(env("a@x.org", "b@y.org"), body)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	before := rssFileKB(t)
	advised, err := TrimMappings(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	after := rssFileKB(t)
	t.Logf("advised %d MB of mappings; RssFile %d MB -> %d MB", advised>>20, before>>10, after>>10)
	if advised < 16<<20 {
		t.Fatalf("only %d bytes of spool mappings found to trim", advised)
	}
	if before-after < 16<<10 {
		t.Fatalf("RssFile went from %d KB to %d KB: sealed value-log pages not released", before, after)
	}
	_, got, err := s.Get(ids[0])
	if err != nil || len(got) != len(body) || got[1000] != body[1000] {
		t.Fatalf("message unreadable after trimming: %v", err)
	}
}

// TestWatchMappingsAdvisesNewFilesRandom: Badger's writable mappings carry
// MADV_RANDOM (VmFlags "rr" in smaps), including a value-log file created
// while running, so commits write single pages rather than large folios.
func TestWatchMappingsAdvisesNewFilesRandom(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), NoSync: true, GCInterval: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := WatchMappings(dir, 1<<40, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer stop()
	body := make([]byte, 64<<10)
	for i := 0; i < 400; i++ { // 25 MB: the value log rolls over to a new file
		if _, err := s.Put(env("a@x.org", "b@y.org"), body); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // one timer round at most
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skip("no smaps")
	}
	writable, advised := 0, 0
	var cur string
	for _, l := range strings.Split(string(smaps), "\n") {
		if f := strings.Fields(l); len(f) >= 6 && strings.Contains(f[0], "-") {
			cur = ""
			if strings.HasPrefix(f[5], dir) && strings.HasPrefix(f[1], "rw") {
				cur = f[5]
				writable++
			}
		}
		if cur != "" && strings.HasPrefix(l, "VmFlags:") && strings.Contains(l, " rr") {
			advised++
			cur = ""
		}
	}
	if writable < 2 || advised != writable {
		t.Fatalf("%d of %d writable spool mappings advised MADV_RANDOM", advised, writable)
	}
}
