//go:build linux

package storage

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// TrimMappings gives back the resident pages of Badger's memory-mapped
// files in dir — sealed value-log files and SSTs — with MADV_PAGEOUT, and
// returns how many bytes of mappings it advised.
//
// Why: Badger keeps every value-log file and table mapped, and every page it
// wrote or read stays in the process's RSS until the kernel is short of
// memory. On a 256 MB board that makes the daemon look (and, to an OOM
// killer scoring RSS, be) several times bigger than its real working set.
//
// Why MADV_PAGEOUT and not MADV_DONTNEED: we advise mappings we did not
// create, found in /proc/self/maps. If Badger unmapped a file between our
// read of the map and the madvise, and something else got that address,
// DONTNEED would zero live memory; PAGEOUT only reclaims (clean file pages
// are dropped, dirty ones are left alone, anonymous pages go to swap if
// there is any), so a stale address can never lose data.
//
// The newest value-log file is skipped: it is being written, and paging out
// its tail would turn the next append into a read-modify-write.
func TrimMappings(dir string) (int64, error) {
	dir = filepath.Clean(dir)
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	type mapping struct {
		start, end uintptr
		path       string
	}
	var maps []mapping
	newestVlog := ""
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
		if filepath.Dir(path) != dir || !(strings.HasSuffix(path, ".vlog") || strings.HasSuffix(path, ".sst")) {
			continue
		}
		rng, _, _ := bytes.Cut(line, []byte(" "))
		lo, hi, ok := bytes.Cut(rng, []byte("-"))
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		maps = append(maps, mapping{uintptr(start), uintptr(end), path})
		if strings.HasSuffix(path, ".vlog") && path > newestVlog {
			newestVlog = path // names are zero-padded file ids: string order is id order
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	var advised int64
	for _, m := range maps {
		if m.path == newestVlog {
			continue
		}
		// A raw syscall on addresses from the map: no Go pointer is formed
		// to memory the Go runtime does not own. Errors (the mapping went
		// away meanwhile) are harmless and ignored.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_PAGEOUT); errno == 0 {
			advised += int64(m.end - m.start)
		}
	}
	return advised, nil
}
