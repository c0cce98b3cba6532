package resolver

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkFastPathHit is the per-packet CPU of a cache hit, without the
// socket syscalls (the dnsperf harness in test/bench/dns measures those).
func BenchmarkFastPathHit(b *testing.B) {
	r := fuzzResolver(b)
	q := new(dns.Msg)
	q.SetQuestion("static.test.", dns.TypeA)
	q.SetEdns0(1232, false)
	p, _ := q.Pack()
	lo := netip.MustParseAddr("127.0.0.1")
	out := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]byte, 0, 4096)
		for pb.Next() {
			if resp, _ := r.fastPath(out[:0], p, lo, false); resp == nil {
				b.Fatal("no answer")
			}
		}
	})
	_ = out
}

func BenchmarkFastPathCacheHit(b *testing.B) {
	r := fuzzResolver(b)
	q := new(dns.Msg)
	q.SetQuestion("big.test.", dns.TypeMX)
	q.SetEdns0(4096, false)
	p, _ := q.Pack()
	lo := netip.MustParseAddr("127.0.0.1")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]byte, 0, 4096)
		for pb.Next() {
			if resp, _ := r.fastPath(out[:0], p, lo, false); resp == nil {
				b.Fatal("no answer")
			}
		}
	})
}
