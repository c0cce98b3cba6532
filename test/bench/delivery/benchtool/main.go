// Command benchtool prepares delivery benchmarks: it fills a spool
// directory with N queued messages (writing through package storage, as the
// SMTP server would) so a drain can be timed without the SMTP side.
//
//	benchtool fill -dir DATA_DIR/spool -n 20000 -size 4096 -workers 64
//	benchtool serve -config mx.toml -cpuprofile cpu.out -memprofile heap.out
//
// serve runs the same daemon as `mxbox serve` with profiling: a CPU profile
// from start to SIGTERM and a heap profile at SIGTERM. It exists so the
// shipped binary needs no profiling flags or debug listeners.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxbox/mxbox/storage"
)

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "serve" {
		os.Exit(serve(os.Args[2:]))
	}
	if len(os.Args) < 2 || os.Args[1] != "fill" {
		fmt.Fprintln(os.Stderr, "usage: benchtool fill -dir SPOOL -n N [-size BYTES] [-workers W] [-nosync]\n       benchtool serve -config FILE [-cpuprofile F] [-memprofile F]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	dir := fs.String("dir", "", "spool directory (data_dir/spool)")
	n := fs.Int("n", 20000, "messages")
	size := fs.Int("size", 4096, "body bytes")
	workers := fs.Int("workers", 64, "concurrent writers (Badger group-commits them)")
	noSync := fs.Bool("nosync", false, "skip per-commit fsync (a faster fill; Close still syncs)")
	fs.Parse(os.Args[2:])
	if *dir == "" {
		fs.Usage()
		os.Exit(2)
	}
	sp, err := storage.Open(*dir, storage.Options{Logger: slog.New(slog.DiscardHandler), GCInterval: time.Hour, NoSync: *noSync})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	line := strings.Repeat("x", 76) + "\r\n"
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	var failed atomic.Int64
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(*n) {
					return
				}
				var b strings.Builder
				fmt.Fprintf(&b, "From: <sender@bench.example>\r\nTo: <rcpt@relay.example>\r\nSubject: bench %d\r\nMessage-ID: <%d@bench.example>\r\n\r\n", i, i)
				for b.Len() < *size {
					b.WriteString(line)
				}
				env := &storage.Envelope{From: "sender@bench.example", Recipients: []storage.Recipient{{Addr: "rcpt@relay.example"}}}
				if _, err := sp.Put(env, []byte(b.String()[:*size])); err != nil {
					failed.Add(1)
					fmt.Fprintln(os.Stderr, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := sp.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%d messages in %.1fs\n", *n, time.Since(start).Seconds())
	if failed.Load() > 0 {
		os.Exit(1)
	}
}
