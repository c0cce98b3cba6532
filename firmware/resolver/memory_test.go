package resolver

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/miekg/dns"
)

// TestMemoryFor50kNames checks the budget (resolver share ≤ 40 MB
// with 50,000 cached names) on live heap, independent of GC timing: 50,000
// names with A, AAAA and MX each (150,000 entries) must fit.
func TestMemoryFor50kNames(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates ~30 MB")
	}
	cfg := baseConfig()
	cfg.CacheBytes = 1 << 30
	clk := newClock()
	r, err := New(cfg, Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const names = 50000
	for i := range names {
		name := fmt.Sprintf("n%d.bench.test.", i)
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX} {
			m := new(dns.Msg)
			m.SetQuestion(name, qt)
			h := dns.RR_Header{Name: name, Rrtype: qt, Class: dns.ClassINET, Ttl: 3600}
			switch qt {
			case dns.TypeA:
				m.Answer = []dns.RR{&dns.A{Hdr: h, A: []byte{10, byte(i >> 16), byte(i >> 8), byte(i)}}}
			case dns.TypeAAAA:
				rr, _ := dns.NewRR(fmt.Sprintf("%s 3600 IN AAAA 2001:db8::%x", name, i))
				m.Answer = []dns.RR{rr}
			case dns.TypeMX:
				m.Answer = []dns.RR{&dns.MX{Hdr: h, Preference: 10, Mx: "mx." + name}}
			}
			key := string(appendKey(nil, mustWireName(name), qt, dns.ClassINET, false))
			e, err := r.makeEntry(key, name, qt, m, clk.Now())
			if err != nil {
				t.Fatal(err)
			}
			r.cache.put(e)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	entries, accounted := r.cache.usage()
	live := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d entries: live heap %.1f MiB (%d B/entry), cache_bytes accounting %.1f MiB",
		entries, float64(live)/(1<<20), live/int64(entries), float64(accounted)/(1<<20))
	if entries != 3*names {
		t.Fatalf("entries = %d", entries)
	}
	if live > 40<<20 {
		t.Errorf("live heap %.1f MiB for %d names (A+AAAA+MX): over the 40 MB budget", float64(live)/(1<<20), names)
	}
	if accounted < live*8/10 {
		t.Errorf("cache_bytes accounting (%d) undercounts real memory (%d): the bound would not hold", accounted, live)
	}
	runtime.KeepAlive(r)
}
