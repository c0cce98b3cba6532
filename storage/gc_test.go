package storage

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// diskUsage is the space files with suffix really occupy (allocated blocks:
// Badger's files are sparse while being written).
func diskUsage(t *testing.T, dir, suffix string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Sys().(*syscall.Stat_t).Blocks * 512
	}
	return n
}

// TestDeliveredMailFreesFlash: after a queue's worth of mail has been put and
// deleted (delivered), value-log GC gives the space back, so a box that
// forwards mail for years does not fill its flash.
func TestDeliveredMailFreesFlash(t *testing.T) {
	if testing.Short() {
		t.Skip("writes ~120 MB")
	}
	s, err := Open(t.TempDir(), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), NoSync: true, GCInterval: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := make([]byte, 4096)
	var peak int64
	for round := 0; round < 6; round++ {
		var ids []string
		for i := 0; i < 5000; i++ {
			id, err := s.Put(env("a@x.org", "b@y.org"), body)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		for _, id := range ids {
			if err := s.Delete(id); err != nil {
				t.Fatal(err)
			}
		}
		s.RunGC()
		vlog := diskUsage(t, s.Dir(), ".vlog")
		peak = max(peak, vlog)
		t.Logf("round %d: %d MB of bodies written so far, value log %d MB", round, (round+1)*5000*4096>>20, vlog>>20)
	}
	vlog := diskUsage(t, s.Dir(), ".vlog")
	written := int64(6 * 5000 * 4096)
	if vlog > written/2 {
		t.Fatalf("value log holds %d MB after %d MB of delivered mail: GC is not freeing flash", vlog>>20, written>>20)
	}
}
