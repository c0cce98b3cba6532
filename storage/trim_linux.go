//go:build linux

package storage

import (
	"bufio"
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Badger writes its value log and memtable WAL through shared file mappings
// and keeps every value-log file and table mapped. Two kernel behaviours make
// that costly on the board, and this file corrects both from our side,
// without touching Badger:
//
//  1. Write amplification. On a fresh ext4 with large-folio support (Linux
//     6.16+), faults in a sequentially written mapping are soon served with
//     large folios; each commit's msync then writes back the whole dirty folio
//     (up to 2 MB) instead of the 4 KB pages that changed: we measured 56 KB
//     written per 4.4 KB record, 8.3 KB with MADV_RANDOM, which keeps faults at
//     single pages. Flash wear is the appliance's lifetime.
//  2. RSS. Pages Badger wrote or read stay resident in our process until the
//     kernel runs short, so the daemon looks several times bigger than its
//     working set (and an OOM killer scores it that way).
//
// The advice is given to mappings found in /proc/self/maps. MADV_RANDOM and
// MADV_PAGEOUT are both safe on an address whose mapping changed under us
// (Badger unmapped a file and something else got the range): RANDOM only
// changes read-ahead, PAGEOUT only reclaims (clean file pages are dropped,
// dirty ones kept, anonymous ones swapped if there is swap). MADV_DONTNEED,
// which would zero such memory, is never used.

type mapping struct {
	start, end uintptr
	path       string
	writable   bool
}

// spoolMappings lists this process's mappings of files in dir (Badger's:
// .vlog, .sst, .mem, DISCARD).
func spoolMappings(dir string) ([]mapping, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mapping
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// 7f12a0000000-7f12a2000000 rw-s 00000000 fe:01 1234   /data/mxbox/spool/000001.vlog
		line := sc.Bytes()
		i := bytes.IndexByte(line, '/')
		if i < 0 {
			continue
		}
		path := string(line[i:])
		if filepath.Dir(path) != dir {
			continue
		}
		fields := bytes.Fields(line[:i])
		if len(fields) < 2 {
			continue
		}
		lo, hi, ok := bytes.Cut(fields[0], []byte("-"))
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		out = append(out, mapping{uintptr(start), uintptr(end), path, len(fields[1]) > 1 && fields[1][1] == 'w'})
	}
	return out, sc.Err()
}

// madvise on a raw address range from the map: no Go pointer is formed to
// memory the Go runtime does not own. An error (the mapping went away) is
// harmless and reported as false.
func madvise(m mapping, advice int) bool {
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, uintptr(advice))
	return errno == 0
}

// TrimMappings pages out the resident pages of every spool mapping
// (MADV_PAGEOUT) and returns how many bytes of mappings it advised. Dirty
// pages — a commit not yet synced — are left alone by the kernel; a clean
// page at the tail of a file being appended to costs one 4 KB read when the
// next append faults it back, which is cheap next to keeping tens of MB
// resident.
func TrimMappings(dir string) (int64, error) {
	maps, err := spoolMappings(filepath.Clean(dir))
	if err != nil {
		return 0, err
	}
	var advised int64
	for _, m := range maps {
		if madvise(m, unix.MADV_PAGEOUT) {
			advised += int64(m.end - m.start)
		}
	}
	return advised, nil
}

// adviseRandom gives MADV_RANDOM to writable mappings not seen before.
func adviseRandom(dir string, seen map[uintptr]string) int {
	maps, err := spoolMappings(dir)
	if err != nil {
		return 0
	}
	n := 0
	live := make(map[uintptr]string, len(maps))
	for _, m := range maps {
		live[m.start] = m.path
		if !m.writable || seen[m.start] == m.path {
			continue
		}
		if madvise(m, unix.MADV_RANDOM) {
			n++
		}
	}
	clear(seen)
	for k, v := range live {
		seen[k] = v
	}
	return n
}

// residentFileBytes is this process's resident file-backed memory, from
// /proc/self/statm (the "shared" column), without parsing status.
func residentFileBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[2], 10, 64)
	return pages * int64(os.Getpagesize())
}

// WatchMappings keeps the spool's mappings advised while the daemon runs:
// MADV_RANDOM on every new writable file the moment Badger creates it
// (inotify, then a short wait for the mapping to appear), and a page-out of
// sealed files whenever resident file memory passes trimAbove. stop ends it.
func WatchMappings(dir string, trimAbove int64, log *slog.Logger) (stop func()) {
	dir = filepath.Clean(dir)
	seen := map[uintptr]string{}
	adviseRandom(dir, seen)
	quit := make(chan struct{})
	done := make(chan struct{})
	created := make(chan struct{}, 1)
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err == nil {
		if _, err = unix.InotifyAddWatch(fd, dir, unix.IN_CREATE); err != nil {
			unix.Close(fd)
			fd = -1
		}
	}
	if err != nil {
		log.Warn("spool mapping watch: inotify unavailable; advising on a timer only", "err", err)
		fd = -1
	}
	var events *os.File
	if fd >= 0 {
		// A non-blocking fd wrapped in os.File waits in the runtime's poller,
		// not a thread, and Close wakes the reader: no polling loop.
		events = os.NewFile(uintptr(fd), "inotify")
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := events.Read(buf); err != nil {
					return
				}
				select {
				case created <- struct{}{}:
				default:
				}
			}
		}()
	}
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		ticks := 0
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-created:
				// Badger maps the file right after creating it; catch the
				// mapping within its first writes.
				for _, wait := range []time.Duration{0, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond} {
					time.Sleep(wait)
					if adviseRandom(dir, seen) > 0 {
						break
					}
				}
			case <-tick.C:
				// statm every tick is one small read; the map walk for new
				// files is a safety net behind inotify, so it runs rarely.
				if ticks++; ticks%50 == 0 {
					adviseRandom(dir, seen)
				}
				trimIfResident(dir, trimAbove)
			}
		}
	}()
	return func() {
		close(quit)
		<-done
		if events != nil {
			events.Close()
		}
	}
}

// walkTrimAbove is the resident file memory past which a long Walk pages
// out the spool's mappings itself.
const walkTrimAbove = 8 << 20

// trimIfResident pages out the spool mappings when more than limit bytes of
// file-backed memory are resident.
func trimIfResident(dir string, limit int64) {
	if residentFileBytes() > limit {
		_, _ = TrimMappings(dir)
	}
}
