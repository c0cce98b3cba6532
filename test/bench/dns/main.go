// Command dnsbench is the helper of the DNS benchmark (run.sh): it plays the
// test upstream (an authoritative server for bench.test on loopback), runs
// mxbox's resolver standalone, and writes dnsperf query files. Everything
// binds 127.0.0.1 only.
//
//	dnsbench upstream -addr 127.0.0.1:15300 -names 50000 -ttl 3600
//	dnsbench mxbox    -listen 127.0.0.1:15301 -forward 127.0.0.1:15300
//	dnsbench queries  -names 50000 -hot 10000 -n 100000 > queries.txt
//	dnsbench names    -names 50000 -type A > warm.txt
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/firmware/resolver"
	"github.com/mxbox/mxbox/firmware/resolver/dnstest"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dnsbench upstream|mxbox|queries|names [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "upstream":
		err = upstream(os.Args[2:])
	case "mxbox":
		err = mxbox(os.Args[2:])
	case "queries":
		err = queries(os.Args[2:])
	case "names":
		err = names(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsbench:", err)
		os.Exit(1)
	}
}

func loopbackOnly(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("%q: the benchmark only uses loopback addresses", addr)
	}
	return nil
}

func waitSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}

func name(i int) string { return fmt.Sprintf("n%d.bench.test.", i) }

// upstream serves bench.test: every name has A, AAAA and MX records.
func upstream(args []string) error {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:15300", "listen address (loopback)")
	n := fs.Int("names", 50000, "number of names")
	ttl := fs.Int("ttl", 3600, "TTL of every record")
	fs.Parse(args) //nolint:errcheck
	if err := loopbackOnly(*addr); err != nil {
		return err
	}
	var z strings.Builder
	fmt.Fprintf(&z, "$TTL %d\nbench.test. IN SOA ns.bench.test. h.bench.test. 1 3600 600 86400 %d\nbench.test. IN NS ns.bench.test.\nns.bench.test. IN A 127.0.0.1\n", *ttl, *ttl)
	for i := range *n {
		fmt.Fprintf(&z, "%s IN A 10.%d.%d.%d\n%s IN AAAA 2001:db8::%x\n%s IN MX 10 mx.%s\n",
			name(i), i>>16&255, i>>8&255, i&255, name(i), i, name(i), name(i))
	}
	s, err := dnstest.Serve(*addr, z.String())
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "upstream on %s: %d names, ttl %d\n", s.Addr, *n, *ttl)
	waitSignal()
	s.Close()
	fmt.Fprintf(os.Stderr, "upstream answered %d queries\n", s.Queries())
	return nil
}

// mxbox runs resolver.New exactly as the daemon will, on loopback.
func mxbox(args []string) error {
	fs := flag.NewFlagSet("mxbox", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:15301", "listen address (loopback)")
	fwd := fs.String("forward", "127.0.0.1:15300", "forwarder (loopback)")
	cacheBytes := fs.String("cache", "64M", "cache_bytes")
	fs.Parse(args) //nolint:errcheck
	for _, a := range []string{*listen, *fwd} {
		if err := loopbackOnly(a); err != nil {
			return err
		}
	}
	cfg := config.Default().DNS
	cfg.Listen = *listen
	cfg.Forwarders = []string{*fwd}
	cfg.RateLimit = 0 // dnsperf is one client sending as fast as it can
	cb, err := config.ParseSize(*cacheBytes)
	if err != nil {
		return err
	}
	cfg.CacheBytes = config.Size(cb)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, err := resolver.New(cfg, resolver.Options{Logger: log, RootHints: []string{"127.0.0.1:1"}})
	if err != nil {
		return err
	}
	if err := r.Start(); err != nil {
		return err
	}
	waitSignal()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.Close(ctx) //nolint:errcheck
	s := r.Stats()
	fmt.Fprintf(os.Stderr, "mxbox stats: queries %d hits %d misses %d stale %d servfail %d dropped %d entries %d bytes %d\n",
		s.Queries, s.CacheHits, s.CacheMisses, s.StaleAnswers, s.ServFails, s.Dropped, s.Entries, s.Bytes)
	return nil
}

// queries writes a dnsperf file with skewed (Zipf) popularity over the
// first hot names: 50% A, 25% AAAA, 25% MX.
func queries(args []string) error {
	fs := flag.NewFlagSet("queries", flag.ExitOnError)
	hot := fs.Int("hot", 10000, "names drawn from")
	n := fs.Int("n", 100000, "lines")
	seed := fs.Uint64("seed", 1, "random seed")
	fs.Int("names", 0, "unused (symmetry with upstream)")
	fs.Parse(args) //nolint:errcheck
	rng := rand.New(rand.NewPCG(*seed, 0))
	z := rand.NewZipf(rng, 1.1, 1, uint64(*hot-1))
	w := os.Stdout
	for range *n {
		i := int(z.Uint64())
		t := "A"
		switch rng.IntN(4) {
		case 2:
			t = "AAAA"
		case 3:
			t = "MX"
		}
		fmt.Fprintf(w, "%s %s\n", name(i), t)
	}
	return nil
}

// names writes every name once with one type (cache warm-up / RSS runs).
func names(args []string) error {
	fs := flag.NewFlagSet("names", flag.ExitOnError)
	n := fs.Int("names", 50000, "number of names")
	typ := fs.String("type", "A", "query type")
	fs.Parse(args) //nolint:errcheck
	for i := range *n {
		fmt.Fprintf(os.Stdout, "%s %s\n", name(i), *typ)
	}
	return nil
}
