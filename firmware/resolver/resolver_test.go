package resolver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/firmware/resolver/dnstest"
)

func TestCacheHitAndMiss(t *testing.T) {
	up := startUpstream(t)
	r := start(t, baseConfig(up.Addr), Options{Now: newClock().Now})
	for i := range 3 {
		m := ask(t, "udp", udpAddr(r), "Example.TEST.", dns.TypeMX)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 2 || !m.RecursionAvailable {
			t.Fatalf("query %d: %v", i, m)
		}
		if m.Question[0].Name != "Example.TEST." {
			t.Errorf("question case not preserved: %s", m.Question[0].Name)
		}
	}
	if got := up.Queries(); got != 1 {
		t.Errorf("upstream saw %d queries, want 1 (two cache hits)", got)
	}
	if m := ask(t, "udp", udpAddr(r), "example.test.", dns.TypeMX); m.IsEdns0() == nil || m.IsEdns0().UDPSize() != ednsSize {
		t.Errorf("EDNS buffer not advertised as %d: %v", ednsSize, m.IsEdns0())
	}
	s := r.Stats()
	if s.CacheHits != 3 || s.CacheMisses != 1 || s.Queries != 4 || s.Entries != 1 {
		t.Errorf("stats = %+v", s)
	}
	// A different type is a different key.
	ask(t, "tcp", udpAddr(r), "example.test.", dns.TypeA)
	if got := up.Queries(); got != 2 {
		t.Errorf("upstream saw %d queries, want 2", got)
	}
}

func TestTTLCountsDownWithClock(t *testing.T) {
	up := startUpstream(t)
	clk := newClock()
	cfg := baseConfig(up.Addr)
	cfg.MaxTTL = config.Duration(200 * time.Second) // clamps the zone's 300
	cfg.MinTTL = config.Duration(60 * time.Second)  // raises short's 20
	r := start(t, cfg, Options{Now: clk.Now})
	addr := udpAddr(r)
	if ttl := firstTTL(t, ask(t, "udp", addr, "mx1.example.test.", dns.TypeA)); ttl != 200 {
		t.Errorf("first TTL %d, want 200 (max_ttl)", ttl)
	}
	clk.Advance(75 * time.Second)
	if ttl := firstTTL(t, ask(t, "udp", addr, "mx1.example.test.", dns.TypeA)); ttl != 125 {
		t.Errorf("after 75s TTL %d, want 125", ttl)
	}
	if up.Queries() != 1 {
		t.Errorf("upstream queries %d, want 1", up.Queries())
	}
	clk.Advance(126 * time.Second)
	if ttl := firstTTL(t, ask(t, "udp", addr, "mx1.example.test.", dns.TypeA)); ttl != 200 {
		t.Errorf("after expiry TTL %d, want a fresh 200", ttl)
	}
	if up.Queries() != 2 {
		t.Errorf("upstream queries %d, want 2 after expiry", up.Queries())
	}
	if ttl := firstTTL(t, ask(t, "udp", addr, "short.example.test.", dns.TypeA)); ttl != 60 {
		t.Errorf("short TTL %d, want 60 (min_ttl)", ttl)
	}
}

func TestNegativeCaching(t *testing.T) {
	up := startUpstream(t)
	clk := newClock()
	cfg := baseConfig(up.Addr)
	r := start(t, cfg, Options{Now: clk.Now})
	addr := udpAddr(r)
	cases := []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{"missing.example.test.", dns.TypeA, dns.RcodeNameError},
		{"mx2.example.test.", dns.TypeAAAA, dns.RcodeSuccess}, // NODATA
	}
	for _, c := range cases {
		before := up.Queries()
		m := ask(t, "udp", addr, c.name, c.qtype)
		if m.Rcode != c.rcode || len(m.Answer) != 0 || len(m.Ns) != 1 {
			t.Fatalf("%s: %v", c.name, m)
		}
		// RFC 2308: TTL = min(SOA TTL 300, SOA minimum 60)
		if ttl := m.Ns[0].Header().Ttl; ttl != 60 {
			t.Errorf("%s: negative TTL %d, want 60", c.name, ttl)
		}
		clk.Advance(30 * time.Second)
		m = ask(t, "udp", addr, c.name, c.qtype)
		if m.Rcode != c.rcode || m.Ns[0].Header().Ttl != 30 || up.Queries() != before+1 {
			t.Errorf("%s: second answer %v (upstream %d→%d)", c.name, m, before, up.Queries())
		}
		clk.Advance(31 * time.Second)
		ask(t, "udp", addr, c.name, c.qtype)
		if up.Queries() != before+2 {
			t.Errorf("%s: negative entry outlived its TTL", c.name)
		}
	}
}

func TestServfailCachedBriefly(t *testing.T) {
	up := startUpstream(t)
	clk := newClock()
	cfg := baseConfig(up.Addr)
	r := start(t, cfg, Options{Now: clk.Now})
	up.SetRcode("mx1.example.test.", dns.RcodeServerFailure)
	if m := ask(t, "udp", udpAddr(r), "mx1.example.test.", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("want SERVFAIL, got %v", m)
	}
	n := up.Queries()
	ask(t, "udp", udpAddr(r), "mx1.example.test.", dns.TypeA)
	if up.Queries() != n {
		t.Error("SERVFAIL was not cached for a few seconds")
	}
	up.SetRcode("mx1.example.test.", -1)
	clk.Advance(servfailTTL + time.Second)
	if m := ask(t, "udp", udpAddr(r), "mx1.example.test.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Errorf("SERVFAIL cached too long: %v", m)
	}
}

func TestForwarderFailoverOrder(t *testing.T) {
	var zb strings.Builder
	zb.WriteString(zone)
	for i := range 100 {
		fmt.Fprintf(&zb, "h%d.example.test. IN A 192.0.2.%d\n", i, i)
	}
	a, b := dnstest.Start(t, zb.String()), dnstest.Start(t, zb.String())
	clk := newClock()
	r := start(t, baseConfig(a.Addr, b.Addr), Options{Now: clk.Now})
	addr := udpAddr(r)

	// Both healthy and unmeasured: configured order.
	ask(t, "udp", addr, "mx1.example.test.", dns.TypeA)
	if a.Queries() != 1 || b.Queries() != 0 {
		t.Fatalf("first query went to a=%d b=%d, want a", a.Queries(), b.Queries())
	}
	// SERVFAIL from the first moves on within the same client query.
	a.SetRcode("mx2.example.test.", dns.RcodeServerFailure)
	if m := ask(t, "udp", addr, "mx2.example.test.", dns.TypeA); m.Rcode != dns.RcodeSuccess || b.QueriesFor("mx2.example.test.") != 1 {
		t.Fatalf("no failover on SERVFAIL: %v", m)
	}
	// A silent forwarder: every client query is still answered (by b, in the
	// same query) and after three timeouts a is put in backoff.
	a.SetDown(true)
	for i := 0; !r.Stats().Forwarders[0].Down; i++ {
		if i == 100 {
			t.Fatalf("a never marked down: %+v", r.Stats().Forwarders)
		}
		name := fmt.Sprintf("h%d.example.test.", i)
		if m := ask(t, "udp", addr, name, dns.TypeA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Fatalf("%s during a's outage: %v", name, m)
		}
	}
	if st := r.Stats().Forwarders; st[0].Failures < 3 || st[1].Down {
		t.Fatalf("forwarder stats after outage: %+v", st)
	}
	aq := a.Queries()
	for i := range 20 { // even the every-16th probe skips a forwarder in backoff
		ask(t, "udp", addr, fmt.Sprintf("h%d.example.test.", i), dns.TypeMX)
	}
	if a.Queries() != aq {
		t.Errorf("a asked while in backoff (%d→%d)", aq, a.Queries())
	}
	// After the backoff a is re-probed (never down forever) and, answering
	// again, becomes healthy.
	a.SetDown(false)
	b.SetDown(true)
	clk.Advance(maxBackoff)
	if m := ask(t, "udp", addr, "short.example.test.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Fatalf("after backoff: %v", m)
	}
	if a.QueriesFor("short.example.test.") != 1 || r.Stats().Forwarders[0].Down {
		t.Errorf("a not re-probed after backoff: %+v", r.Stats().Forwarders)
	}
}

const bigZone = `
$TTL 300
big.test. IN SOA ns.big.test. h.big.test. 1 1 1 1 60
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-01.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-02.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-03.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-04.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-05.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-06.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-07.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-08.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-09.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-10.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-11.big.test.
big.test. IN MX 10 a-rather-long-mail-exchanger-name-number-12.big.test.
`

func TestTruncationRetriesOverTCP(t *testing.T) {
	up := dnstest.Start(t, bigZone)
	up.SetTruncateUDP(true) // every UDP answer from upstream is empty with TC
	r := start(t, baseConfig(up.Addr), Options{Now: newClock().Now})

	mxs, err := r.LookupMX(context.Background(), "big.test")
	if err != nil || len(mxs) != 12 {
		t.Fatalf("LookupMX over truncating upstream: %v %v", mxs, err)
	}
	// A client without EDNS gets what fits in 512 bytes and TC...
	m, err := tryAsk("udp", udpAddr(r), "big.test.", dns.TypeMX, false, nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Truncated || len(m.Answer) == 0 || len(m.Answer) >= 12 {
		t.Errorf("non-EDNS UDP answer: TC=%v with %d records, want TC and a prefix", m.Truncated, len(m.Answer))
	}
	// ...an EDNS client gets all of it (fits in 1232), and TCP always does.
	if m := ask(t, "udp", udpAddr(r), "big.test.", dns.TypeMX); m.Truncated || len(m.Answer) != 12 {
		t.Errorf("EDNS UDP answer: TC=%v %d records", m.Truncated, len(m.Answer))
	}
	if m := ask(t, "tcp", udpAddr(r), "big.test.", dns.TypeMX); m.Truncated || len(m.Answer) != 12 {
		t.Errorf("TCP answer: TC=%v %d records", m.Truncated, len(m.Answer))
	}
}

func TestStaleServedWhenUpstreamsDownAndRefreshedWhenBack(t *testing.T) {
	a, b := startUpstream(t), startUpstream(t)
	clk := newClock()
	r := start(t, baseConfig(a.Addr, b.Addr), Options{Now: clk.Now})
	addr := udpAddr(r)
	ask(t, "udp", addr, "example.test.", dns.TypeMX)

	a.SetDown(true)
	b.SetDown(true)
	clk.Advance(301 * time.Second)
	start := time.Now()
	m := ask(t, "udp", addr, "example.test.", dns.TypeMX)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 2 || firstTTL(t, m) != staleTTL || !isStale(m) {
		t.Fatalf("stale answer: %v", m)
	}
	if d := time.Since(start); d > staleWait+500*time.Millisecond {
		t.Errorf("stale answer took %v, want < ~1.8s", d)
	}
	// Within 30 s no new refresh is attempted: the answer is immediate.
	q := a.Queries() + b.Queries()
	clk.Advance(10 * time.Second)
	start = time.Now()
	if m := ask(t, "udp", addr, "example.test.", dns.TypeMX); !isStale(m) || time.Since(start) > 500*time.Millisecond {
		t.Errorf("second stale answer: %v after %v", m, time.Since(start))
	}
	if a.Queries()+b.Queries() != q {
		t.Errorf("refresh retried within 30 s")
	}
	mxs, err := r.LookupMX(context.Background(), "example.test")
	if err != nil || len(mxs) != 2 || mxs[0].Host != "mx1.example.test." {
		t.Errorf("API during outage: %v %v", mxs, err)
	}

	// Upstream back, answering NXDOMAIN-free SERVFAIL first: still stale,
	// never a negative answer replacing good data.
	a.SetDown(false)
	a.SetRcode("example.test.", dns.RcodeServerFailure)
	clk.Advance(31 * time.Second)
	if m := ask(t, "udp", addr, "example.test.", dns.TypeMX); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 2 {
		t.Errorf("SERVFAIL upstream replaced stale data: %v", m)
	}
	// Fully back: the next refresh (after 30 s) brings fresh data.
	a.SetRcode("example.test.", -1)
	clk.Advance(31 * time.Second)
	m = ask(t, "udp", addr, "example.test.", dns.TypeMX)
	if isStale(m) || firstTTL(t, m) != 300 {
		t.Errorf("not refreshed after upstream returned: %v", m)
	}
	if s := r.Stats(); s.StaleAnswers < 3 {
		t.Errorf("stale counter %d", s.StaleAnswers)
	}
}

func TestStaleAtOnceWhenEveryForwarderInBackoff(t *testing.T) {
	up := startUpstream(t)
	clk := newClock()
	r := start(t, baseConfig(up.Addr), Options{Now: clk.Now})
	names := []string{"mx1.example.test.", "mx2.example.test.", "example.test.", "www.example.test."}
	for _, n := range names {
		ask(t, "udp", udpAddr(r), n, dns.TypeA)
	}
	up.SetDown(true)
	clk.Advance(301 * time.Second)
	for _, n := range names[:3] { // three timeouts put the only forwarder in backoff
		if m := ask(t, "udp", udpAddr(r), n, dns.TypeA); !isStale(m) {
			t.Fatalf("%s: %v", n, m)
		}
	}
	if !r.Stats().Forwarders[0].Down {
		t.Fatalf("forwarder not in backoff: %+v", r.Stats().Forwarders)
	}
	start := time.Now()
	// Waiting for the forwarder would take its try timeout (≥ 1.4 s by now).
	if m := ask(t, "udp", udpAddr(r), names[3], dns.TypeA); !isStale(m) || time.Since(start) > time.Second {
		t.Errorf("stale answer with every forwarder in backoff took %v: %v", time.Since(start), m)
	}
}

func TestTCPIdleConnectionClosed(t *testing.T) {
	up := startUpstream(t)
	r, err := New(baseConfig(up.Addr), Options{Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	r.tcpIdle = 200 * time.Millisecond
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background()) //nolint:errcheck
	_, tcpAddr := r.Addr()
	c, err := net.Dial("tcp", tcpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(4 * time.Second)) //nolint:errcheck
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: read %v, want EOF from the server", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Errorf("closed after %v, want ~200ms", d)
	}
}

func TestStaleAfterMaxStaleIsGone(t *testing.T) {
	up := startUpstream(t)
	clk := newClock()
	cfg := baseConfig(up.Addr)
	cfg.MaxStale = config.Duration(time.Hour)
	r := start(t, cfg, Options{Now: clk.Now})
	ask(t, "udp", udpAddr(r), "mx1.example.test.", dns.TypeA)
	up.SetDown(true)
	clk.Advance(300*time.Second + time.Hour + time.Second)
	_, err := r.LookupHost(context.Background(), "mx1.example.test")
	var te *TempError
	if !errors.As(err, &te) || !te.Temporary() {
		t.Errorf("past max_stale: err %v, want TempError", err)
	}
}

func TestCachePersistedAcrossRestartWithUpstreamDown(t *testing.T) {
	up := startUpstream(t)
	clk := newClock()
	store := &mapStore{}
	cfg := baseConfig(up.Addr)
	r1, err := New(cfg, Options{Now: clk.Now, Store: store, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.Start(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := r1.LookupMX(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.LookupHost(ctx, "mx1.example.test"); err != nil {
		t.Fatal(err)
	}
	if err := r1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(store.m[snapshotName]) == 0 {
		t.Fatal("no snapshot saved on Close")
	}

	// Power cut; the box comes back an hour later with upstream DNS dead.
	up.SetDown(true)
	clk.Advance(time.Hour)
	r2 := start(t, cfg, Options{Now: clk.Now, Store: store})
	if s := r2.Stats(); s.Entries != 3 {
		t.Errorf("loaded %d entries, want 3", s.Entries)
	}
	mxs, err := r2.LookupMX(ctx, "example.test")
	if err != nil || len(mxs) != 2 {
		t.Fatalf("LookupMX after restart: %v %v", mxs, err)
	}
	addrs, err := r2.LookupHost(ctx, "mx1.example.test")
	if err != nil || len(addrs) != 2 {
		t.Fatalf("LookupHost after restart: %v %v", addrs, err)
	}
	m := ask(t, "udp", udpAddr(r2), "example.test.", dns.TypeMX)
	if m.Rcode != dns.RcodeSuccess || !isStale(m) {
		t.Errorf("socket answer after restart: %v", m)
	}
	// The original expiry was kept: a fresh-looking TTL would be a lie.
	for _, e := range []string{"example.test."} {
		ent := r2.cache.peek(string(appendKey(nil, mustWireName(e), dns.TypeMX, dns.ClassINET, false)))
		if ent == nil || ent.fresh(clk.Now()) {
			t.Errorf("%s: expiry not preserved: %+v", e, ent)
		}
	}
}

func TestSnapshotCorruptionIgnored(t *testing.T) {
	up := startUpstream(t)
	store := &mapStore{}
	clk := newClock()
	r1 := start(t, baseConfig(up.Addr), Options{Now: clk.Now, Store: store})
	r1.LookupMX(context.Background(), "example.test") //nolint:errcheck
	if err := r1.saveSnapshot(); err != nil {
		t.Fatal(err)
	}
	data := store.m[snapshotName]
	data[len(data)/2] ^= 0xFF
	r2, err := New(baseConfig(), Options{Now: clk.Now, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	r2.loadSnapshot()
	if s := r2.Stats(); s.Entries != 0 {
		t.Errorf("corrupt snapshot loaded %d entries", s.Entries)
	}
}

func TestPinnedDestinationsKeptAndRefreshedAhead(t *testing.T) {
	var zb strings.Builder
	zb.WriteString(zone)
	for i := range 600 {
		fmt.Fprintf(&zb, "h%d.example.test. IN A 192.0.2.%d\n", i, i%250)
	}
	up := dnstest.Start(t, zb.String())
	clk := newClock()
	cfg := baseConfig(up.Addr)
	cfg.CacheBytes = 64 << 10 // the minimum: 600 names do not fit
	r := start(t, cfg, Options{Now: clk.Now})
	ctx := context.Background()

	r.Pin([]string{"example.test"})
	if _, err := r.LookupMX(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.LookupHost(ctx, "mx1.example.test"); err != nil {
		t.Fatal(err)
	}
	if s := r.Stats(); s.Pinned != 3 { // the domain and its two MX targets
		t.Errorf("pinned %d names, want 3", s.Pinned)
	}
	for i := range 600 {
		if _, err := r.LookupHost(ctx, fmt.Sprintf("h%d.example.test", i)); err != nil {
			t.Fatal(err)
		}
	}
	s := r.Stats()
	if s.Bytes > 80<<10 || s.Entries > 500 {
		t.Errorf("cache not bounded: %+v", s)
	}
	if r.cache.peek(string(appendKey(nil, mustWireName("h0.example.test."), dns.TypeA, dns.ClassINET, false))) != nil {
		t.Error("unpinned early entry survived: eviction not LRU")
	}
	for _, k := range []struct {
		name  string
		qtype uint16
	}{{"example.test.", dns.TypeMX}, {"mx1.example.test.", dns.TypeA}, {"mx1.example.test.", dns.TypeAAAA}} {
		if r.cache.peek(string(appendKey(nil, mustWireName(k.name), k.qtype, dns.ClassINET, false))) == nil {
			t.Errorf("pinned %s %s was evicted", k.name, dns.TypeToString[k.qtype])
		}
	}

	// Refresh ahead: in the last 10% of the TTL the pinned answers are
	// fetched again without any client asking.
	before := up.QueriesFor("example.test.")
	clk.Advance(275 * time.Second)
	r.refreshPinned()
	eventually(t, "pinned MX refreshed", func() bool { return up.QueriesFor("example.test.") > before })
	eventually(t, "pinned MX target refreshed", func() bool { return up.QueriesFor("mx2.example.test.") >= 2 })
	clk.Advance(100 * time.Second) // past the original expiry: still fresh thanks to refresh
	up.SetDown(true)
	if m := ask(t, "udp", udpAddr(r), "example.test.", dns.TypeMX); isStale(m) || len(m.Answer) != 2 {
		t.Errorf("pinned MX not fresh: %v", m)
	}

	r.Pin(nil)
	if s := r.Stats(); s.Pinned != 0 {
		t.Errorf("Pin(nil) left %d pinned", s.Pinned)
	}
}

func TestPrefetchInLastTenthOfTTL(t *testing.T) {
	up := startUpstream(t)
	clk := newClock()
	r := start(t, baseConfig(up.Addr), Options{Now: clk.Now})
	addr := udpAddr(r)
	ask(t, "udp", addr, "mx2.example.test.", dns.TypeA)
	clk.Advance(200 * time.Second)
	ask(t, "udp", addr, "mx2.example.test.", dns.TypeA)
	if up.Queries() != 1 {
		t.Fatal("prefetched too early")
	}
	clk.Advance(75 * time.Second) // 275 of 300 s: last 10%
	if ttl := firstTTL(t, ask(t, "udp", addr, "mx2.example.test.", dns.TypeA)); ttl != 25 {
		t.Errorf("prefetch-triggering answer TTL %d, want the cached 25", ttl)
	}
	eventually(t, "prefetch", func() bool { return up.Queries() == 2 })
	eventually(t, "prefetched entry", func() bool {
		return firstTTL(t, ask(t, "udp", addr, "mx2.example.test.", dns.TypeA)) == 300
	})
	if r.Stats().Prefetches != 1 {
		t.Errorf("prefetches = %d", r.Stats().Prefetches)
	}
}

func TestRefusedOutsideAllowList(t *testing.T) {
	up := startUpstream(t)
	cfg := baseConfig(up.Addr)
	cfg.AllowLoopback = false
	cfg.Allow = []string{"127.0.0.1/32"}
	r := start(t, cfg, Options{Now: newClock().Now}) // no relay prefixes
	addr := udpAddr(r)
	for _, netw := range []string{"udp", "tcp"} {
		var local net.Addr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}
		if netw == "tcp" {
			local = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
		}
		m, err := tryAsk(netw, addr, "example.test.", dns.TypeMX, true, local, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 {
			t.Errorf("%s from 127.0.0.2: %v, want REFUSED", netw, m)
		}
	}
	if m := ask(t, "udp", addr, "example.test.", dns.TypeMX); m.Rcode != dns.RcodeSuccess {
		t.Errorf("from 127.0.0.1: %v", m)
	}
	if up.QueriesFor("example.test.") != 1 || r.Stats().Refused != 2 {
		t.Errorf("refused clients reached upstream or were not counted: %+v", r.Stats())
	}

	// The relay networks passed by the daemon are allowed too.
	cfg.Allow = nil
	r2 := start(t, cfg, Options{Now: newClock().Now, RelayPrefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	m, err := tryAsk("udp", udpAddr(r2), "example.test.", dns.TypeMX, true, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}, time.Second)
	if err != nil || m.Rcode != dns.RcodeSuccess {
		t.Errorf("relay network client: %v %v", m, err)
	}
}

func TestRateLimitPerClient(t *testing.T) {
	up := startUpstream(t)
	clk := newClock()
	cfg := baseConfig(up.Addr)
	cfg.RateLimit, cfg.RateBurst = 5, 5
	r := start(t, cfg, Options{Now: clk.Now})
	addr := udpAddr(r)
	ask(t, "tcp", addr, "example.test.", dns.TypeMX) // warm; TCP is not limited

	count := func(n int) (ok, tc, dropped int) {
		for range n {
			m, err := tryAsk("udp", addr, "example.test.", dns.TypeMX, true, nil, 300*time.Millisecond)
			switch {
			case err != nil:
				dropped++
			case m.Truncated && len(m.Answer) == 0:
				tc++
			case m.Rcode == dns.RcodeSuccess && len(m.Answer) == 2:
				ok++
			}
		}
		return
	}
	ok, tc, dropped := count(11)
	if ok != 5 || tc != 3 || dropped != 3 {
		t.Errorf("over the limit: %d answered, %d TC, %d dropped; want 5, 3, 3", ok, tc, dropped)
	}
	// TCP still works for the limited client (the TC answer's purpose).
	if m := ask(t, "tcp", addr, "example.test.", dns.TypeMX); len(m.Answer) != 2 {
		t.Errorf("TCP while limited: %v", m)
	}
	// Another client address has its own bucket.
	if m, err := tryAsk("udp", addr, "example.test.", dns.TypeMX, true, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)}, time.Second); err != nil || len(m.Answer) != 2 {
		t.Errorf("other client limited too: %v %v", m, err)
	}
	clk.Advance(time.Second) // refills 5 tokens
	if ok, _, _ := count(5); ok != 5 {
		t.Errorf("after refill %d answered, want 5", ok)
	}
	if r.Stats().RateLimited != 6 {
		t.Errorf("RateLimited = %d, want 6", r.Stats().RateLimited)
	}
}

func TestTCPPipelining(t *testing.T) {
	up := startUpstream(t)
	r := start(t, baseConfig(up.Addr), Options{Now: newClock().Now})
	_, tcpAddr := r.Addr()
	c, err := net.DialTimeout("tcp", tcpAddr.String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second)) //nolint:errcheck
	names := []string{"example.test.", "mx1.example.test.", "missing.example.test.", "example.test."}
	var out []byte
	for i, n := range names {
		q := new(dns.Msg)
		q.SetQuestion(n, dns.TypeMX)
		q.Id = uint16(100 + i)
		b, _ := q.Pack()
		out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
		out = append(out, b...)
	}
	if _, err := c.Write(out); err != nil { // all queries in one write
		t.Fatal(err)
	}
	seen := map[uint16]int{}
	for range names {
		var lb [2]byte
		if _, err := io.ReadFull(c, lb[:]); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, binary.BigEndian.Uint16(lb[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatal(err)
		}
		seen[m.Id] = m.Rcode
	}
	want := map[uint16]int{100: 0, 101: 0, 102: dns.RcodeNameError, 103: 0}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("pipelined answers %v, want %v", seen, want)
	}
}

func TestRecursionThroughFakeHierarchy(t *testing.T) {
	const rootZone = `
. 86400 IN SOA a.root. h.root. 1 1 1 1 3600
. 86400 IN NS a.root.
a.root. 86400 IN A 127.0.0.2
test. 86400 IN NS ns.test.
ns.test. 86400 IN A 127.0.0.3
ns.elsewhere. 86400 IN A 127.0.0.4
`
	const tldZone = `
test. 3600 IN SOA ns.test. h.test. 1 1 1 1 600
test. 3600 IN NS ns.test.
ns.test. 3600 IN A 127.0.0.3
example.test. 3600 IN NS ns1.example.test.
ns1.example.test. 3600 IN A 127.0.0.4
glueless.test. 3600 IN NS ns.elsewhere.
; out-of-bailiwick "glue" sent along with that referral: a trap, must be ignored
ns.elsewhere. 3600 IN A 127.0.0.9
`
	const authZone = `
$TTL 300
example.test. IN SOA ns1.example.test. h.example.test. 1 1 1 1 60
example.test. IN NS ns1.example.test.
ns1.example.test. IN A 127.0.0.4
example.test. IN MX 10 mx.example.test.
mx.example.test. IN A 192.0.2.25
alias.example.test. IN CNAME www.glueless.test.
glueless.test. IN SOA ns1.example.test. h.example.test. 1 1 1 1 60
www.glueless.test. IN A 192.0.2.80
`
	var root, tld, auth *dnstest.Server
	var port int
	for attempt := 0; attempt < 10 && auth == nil; attempt++ {
		root = dnstest.StartOn(t, "127.0.0.2", rootZone)
		_, p, _ := net.SplitHostPort(root.Addr)
		fmt.Sscan(p, &port)
		var err error
		if tld, err = dnstest.StartAt(t, "127.0.0.3:"+p, tldZone); err != nil {
			continue
		}
		auth, _ = dnstest.StartAt(t, "127.0.0.4:"+p, authZone)
	}
	if auth == nil {
		t.Fatal("could not get one port on 127.0.0.2-4")
	}
	dead := dnstest.Start(t, zone)
	dead.SetDown(true)
	cfg := baseConfig(dead.Addr)
	cfg.Recursion = true
	r := start(t, cfg, Options{Now: newClock().Now, RootHints: []string{root.Addr}, ServerPort: port})
	ctx := context.Background()

	mxs, err := r.LookupMX(ctx, "example.test")
	if err != nil || len(mxs) != 1 || mxs[0].Host != "mx.example.test." {
		t.Fatalf("recursive MX: %v %v", mxs, err)
	}
	if root.Queries() == 0 || tld.Queries() == 0 || auth.Queries() == 0 {
		t.Errorf("hierarchy not walked: root %d tld %d auth %d", root.Queries(), tld.Queries(), auth.Queries())
	}
	// CNAME into another zone whose name server is out of bailiwick: its
	// glue (127.0.0.9, where nothing listens) must be ignored and its address
	// resolved from the root instead.
	addrs, err := r.LookupHost(ctx, "alias.example.test")
	if err != nil || len(addrs) != 1 || addrs[0].String() != "192.0.2.80" {
		t.Errorf("CNAME across zones with glue-less NS: %v %v", addrs, err)
	}
	if _, err := r.LookupHost(ctx, "nope.example.test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("recursive NXDOMAIN: %v", err)
	}
	m := ask(t, "udp", udpAddr(r), "mx.example.test.", dns.TypeA)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Errorf("socket query via recursion: %v", m)
	}
	if r.Stats().Recursions == 0 {
		t.Error("recursions not counted")
	}
}

func TestRecursionBoundedOnReferralLoop(t *testing.T) {
	// The "root" refers test. back to itself: no progress, so it must stop.
	var root *dnstest.Server
	root = dnstest.StartOn(t, "127.0.0.2", `
. 86400 IN SOA a.root. h.root. 1 1 1 1 3600
test. 86400 IN NS a.root.
a.root. 86400 IN A 127.0.0.2
`)
	_, p, _ := net.SplitHostPort(root.Addr)
	var port int
	fmt.Sscan(p, &port)
	cfg := baseConfig()
	cfg.Recursion = true
	r := start(t, cfg, Options{Now: newClock().Now, RootHints: []string{root.Addr}, ServerPort: port})
	_, err := r.LookupMX(context.Background(), "loop.test")
	var te *TempError
	if !errors.As(err, &te) {
		t.Errorf("referral loop: %v, want TempError", err)
	}
	if root.Queries() > maxRecQueries {
		t.Errorf("%d queries: not bounded", root.Queries())
	}
}

func TestLookupErrorsAndNullMX(t *testing.T) {
	up := startUpstream(t)
	r := start(t, baseConfig(up.Addr), Options{Now: newClock().Now})
	ctx := context.Background()
	mxs, err := r.LookupMX(ctx, "nomail.example.test")
	if err != nil || len(mxs) != 1 || mxs[0].Host != "." || mxs[0].Pref != 0 {
		t.Errorf("null MX: %v %v", mxs, err)
	}
	if _, err := r.LookupMX(ctx, "missing.example.test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("NXDOMAIN: %v", err)
	}
	if _, err := r.LookupMX(ctx, "mx1.example.test"); !errors.Is(err, ErrNoData) {
		t.Errorf("NODATA: %v", err)
	}
	addrs, err := r.LookupHost(ctx, "www.example.test")
	if err != nil || len(addrs) != 2 {
		t.Errorf("CNAME host: %v %v", addrs, err)
	}
	if _, err := r.LookupHost(ctx, "missing.example.test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("host NXDOMAIN: %v", err)
	}
	up.SetRcode("broken.example.test.", dns.RcodeServerFailure)
	_, err = r.LookupHost(ctx, "broken.example.test")
	var te interface{ Temporary() bool }
	if !errors.As(err, &te) || !te.Temporary() || errors.Is(err, ErrNotFound) {
		t.Errorf("SERVFAIL: %v, want temporary", err)
	}
	if a, err := r.LookupHost(ctx, "192.0.2.7"); err != nil || a[0].String() != "192.0.2.7" {
		t.Errorf("IP literal: %v %v", a, err)
	}
}

func TestStaticRecordsWithoutUpstream(t *testing.T) {
	cfg := baseConfig() // no forwarders, no recursion: nothing leaves
	cfg.Records = []config.DNSRecord{
		{Name: "smtp.isp.example", Type: "A", Value: "192.0.2.10"},
		{Name: "smtp.isp.example", Type: "A", Value: "192.0.2.11"},
		{Name: "isp.example", Type: "MX", Value: "10 smtp.isp.example"},
	}
	r := start(t, cfg, Options{Now: newClock().Now})
	ctx := context.Background()
	mxs, err := r.LookupMX(ctx, "isp.example")
	if err != nil || len(mxs) != 1 || mxs[0].Host != "smtp.isp.example." {
		t.Fatalf("static MX: %v %v", mxs, err)
	}
	addrs, err := r.LookupHost(ctx, "SMTP.isp.example.")
	if err != nil || len(addrs) != 2 {
		t.Fatalf("static A (AAAA must be local NODATA): %v %v", addrs, err)
	}
	if m := ask(t, "udp", udpAddr(r), "smtp.isp.example.", dns.TypeA); len(m.Answer) != 2 || firstTTL(t, m) != staticTTL {
		t.Errorf("static over the socket: %v", m)
	}
	if _, err := r.LookupHost(ctx, "elsewhere.example"); err == nil {
		t.Error("non-static name resolved with no upstream")
	}
	bad := baseConfig()
	bad.Records = []config.DNSRecord{{Name: "x.example", Type: "MX", Value: "ten"}}
	if _, err := New(bad, Options{}); err == nil {
		t.Error("bad static record accepted")
	}
}

func TestMalformedPackets(t *testing.T) {
	r, err := New(baseConfig(), Options{Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	q := new(dns.Msg)
	q.SetQuestion("example.test.", dns.TypeA)
	good, _ := q.Pack()
	resp := func(p []byte) *dns.Msg {
		b, _ := r.fastPath(nil, p, lo, false)
		if b == nil {
			return nil
		}
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatalf("our reply does not parse: %v", err)
		}
		return m
	}
	if resp(good[:5]) != nil {
		t.Error("short packet answered")
	}
	asResponse := append([]byte(nil), good...)
	asResponse[2] |= 0x80
	if resp(asResponse) != nil {
		t.Error("a response packet was answered (loop risk)")
	}
	if m := resp(good[:len(good)-2]); m == nil || m.Rcode != dns.RcodeFormatError {
		t.Errorf("truncated question: %v", m)
	}
	q.SetEdns0(1232, false)
	q.IsEdns0().SetVersion(1)
	v1, _ := q.Pack()
	if m := resp(v1); m == nil || m.Rcode != dns.RcodeBadVers {
		t.Errorf("EDNS version 1: %v", m)
	}
	q2 := new(dns.Msg)
	q2.SetQuestion("example.test.", dns.TypeAXFR)
	axfr, _ := q2.Pack()
	if m := resp(axfr); m == nil || m.Rcode != dns.RcodeRefused {
		t.Errorf("AXFR: %v", m)
	}
}

func TestConfigDefaultsBuildAResolver(t *testing.T) {
	cfg := config.Default().DNS
	r, err := New(cfg, Options{RelayPrefixes: config.Default().SMTP.RelayPrefixes()})
	if err != nil {
		t.Fatal(err)
	}
	if !r.allowed(netip.MustParseAddr("127.0.0.1")) || r.allowed(netip.MustParseAddr("192.0.2.1")) {
		t.Error("default ACL wrong")
	}
	if len(r.roots) != len(builtinRootHints) {
		t.Error("built-in root hints not used by default")
	}
}
