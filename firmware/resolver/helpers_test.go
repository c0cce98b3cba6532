package resolver

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/firmware/resolver/dnstest"
	"github.com/mxbox/mxbox/test/clock"
)

// Every test talks only to 127.0.0.0/8: dnstest servers and the resolver.

const zone = `
$TTL 300
example.test.       IN SOA ns.example.test. host.example.test. 1 3600 600 86400 60
example.test.       IN NS  ns.example.test.
ns.example.test.    IN A   127.0.0.1
example.test.       IN MX  10 mx1.example.test.
example.test.       IN MX  20 mx2.example.test.
mx1.example.test.   IN A   192.0.2.1
mx1.example.test.   IN AAAA 2001:db8::1
mx2.example.test.   IN A   192.0.2.2
www.example.test.   IN CNAME mx1.example.test.
nomail.example.test. IN MX 0 .
short.example.test. 20 IN A 192.0.2.20
`

// fakeClock is the injected clock: tests move time instead of sleeping.
type fakeClock = clock.Clock

func newClock() *fakeClock { return clock.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) }

// mapStore is a SnapshotStore in memory, shared across resolver restarts.
type mapStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *mapStore) LoadBlob(name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[name], nil
}

func (s *mapStore) SaveBlob(name string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string][]byte{}
	}
	s.m[name] = append([]byte(nil), data...)
	return nil
}

// baseConfig is the embedded default [dns] on an ephemeral loopback port,
// without rate limiting unless a test turns it on.
func baseConfig(forwarders ...string) config.DNS {
	c := config.Default().DNS
	c.Listen = "127.0.0.1:0"
	c.Forwarders = forwarders
	c.RateLimit = 0
	c.Workers = 8
	c.QueryTimeout = config.Duration(3 * time.Second)
	return c
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func start(t testing.TB, cfg config.DNS, opts Options) *Resolver {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	r, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return r
}

func udpAddr(r *Resolver) string { u, _ := r.Addr(); return u.String() }

// ask sends one EDNS query over net ("udp"/"tcp") and fails the test on a
// transport error.
func ask(t testing.TB, netw, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m, err := tryAsk(netw, addr, name, qtype, true, nil, 2*time.Second)
	if err != nil {
		t.Fatalf("%s %s %s: %v", netw, name, dns.TypeToString[qtype], err)
	}
	return m
}

func tryAsk(netw, addr, name string, qtype uint16, edns bool, local net.Addr, timeout time.Duration) (*dns.Msg, error) {
	c := &dns.Client{Net: netw, Timeout: timeout}
	if local != nil {
		c.Dialer = &net.Dialer{LocalAddr: local, Timeout: timeout}
	}
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	if edns {
		q.SetEdns0(1232, false)
	}
	m, _, err := c.Exchange(q, addr)
	return m, err
}

func firstTTL(t testing.TB, m *dns.Msg) uint32 {
	t.Helper()
	if len(m.Answer) == 0 {
		t.Fatalf("no answer: %v", m)
	}
	return m.Answer[0].Header().Ttl
}

func isStale(m *dns.Msg) bool {
	opt := m.IsEdns0()
	if opt == nil {
		return false
	}
	for _, o := range opt.Option {
		if ede, ok := o.(*dns.EDNS0_EDE); ok && ede.InfoCode == dns.ExtendedErrorCodeStaleAnswer {
			return true
		}
	}
	return false
}

// eventually polls cond for up to 3 s (background refreshes are async).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func startUpstream(t testing.TB) *dnstest.Server { return dnstest.Start(t, zone) }
