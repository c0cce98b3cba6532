package delivery

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/firmware/resolver"
	"github.com/mxbox/mxbox/firmware/resolver/dnstest"
	"github.com/mxbox/mxbox/storage"
)

// realResolver is the production resolver forwarding to a loopback test
// authority: the same code path the daemon uses, no other network.
func realResolver(t *testing.T, zone string) (*resolver.Resolver, *dnstest.Server) {
	t.Helper()
	srv := dnstest.Start(t, zone)
	cfg := config.Default().DNS
	cfg.Listen = ""
	cfg.Forwarders = []string{srv.Addr}
	cfg.Recursion = false
	cfg.RateLimit = 0
	cfg.QueryTimeout = config.Duration(2 * time.Second)
	r, err := resolver.New(cfg, resolver.Options{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.Close(ctx)
	})
	return r, srv
}

const testZone = `
$TTL 60
test.               IN SOA ns.test. host.test. 1 3600 600 86400 5
test.               IN NS  ns.test.
ns.test.            IN A   127.0.0.1
dest.test.          IN MX  10 mx1.dest.test.
dest.test.          IN MX  20 mx2.dest.test.
mx1.dest.test.      IN A   127.0.0.2
mx2.dest.test.      IN CNAME pool.dest.test.
pool.dest.test.     IN A   127.0.0.3
pool.dest.test.     IN A   127.0.0.4
pool.dest.test.     IN A   127.0.0.5
nomail.test.        IN MX  0 .
flaky.test.         IN MX  10 mx1.dest.test.
implicit.test.      IN A   127.0.0.5
`

func TestRealDNSFailoverFollowsCNAMEAndTriesEveryAddress(t *testing.T) {
	port := freePort(t, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
	// mx1 (preference 10) is down; mx2 is a CNAME to a name with three
	// addresses of which only 127.0.0.5 listens.
	s := startSink(t, "127.0.0.5", sinkOpts{port: port})
	res, _ := realResolver(t, testZone)
	f := mxFixture(t, res, "")
	f.r.router.mxPort = port
	f.r.Start()
	for i := range 5 {
		id := f.put("a@example.org", fmt.Sprintf("u%d@dest.test", i))
		f.waitGone(id, 10*time.Second)
	}
	s.waitMessages(t, 5, time.Second)
	if st := f.r.Stats(); st.Deferred != 0 {
		t.Errorf("%d deferrals; every MX and address must be tried in one attempt", st.Deferred)
	}
	// Implicit MX through the real resolver (NODATA for MX → A record).
	id := f.put("a@example.org", "u@implicit.test")
	f.waitGone(id, 5*time.Second)
}

func TestRealDNSNullMXAndNXDomainBounceServfailRetries(t *testing.T) {
	res, srv := realResolver(t, testZone)
	srv.SetRcode("flaky.test.", dns.RcodeServerFailure)
	f := mxFixture(t, res, "")
	f.r.Start()
	null := f.put("a@example.org", "u@nomail.test")
	nx := f.put("a@example.org", "u@nonexistent.test")
	sf := f.put("a@example.org", "u@flaky.test")
	f.waitGone(null, 10*time.Second)
	f.waitGone(nx, 10*time.Second)
	e := f.waitAttempts(sf, 1, 10*time.Second)
	if rc := e.Recipients[0]; rc.State != storage.RcptPending || rc.Status != "4.4.3" {
		t.Errorf("SERVFAIL: %+v, want pending 4.4.3", rc)
	}
	status := map[string]string{}
	for _, d := range f.parsedDSNs() {
		for _, rb := range d.Recipients {
			status[strings.TrimPrefix(rb.Get("Final-Recipient"), "rfc822; ")] = rb.Get("Status") + " " + rb.Get("Action")
		}
	}
	want := map[string]string{"u@nomail.test": "5.1.10 failed", "u@nonexistent.test": "5.1.2 failed"}
	if fmt.Sprint(status) != fmt.Sprint(want) {
		t.Errorf("DSN statuses %v, want %v", status, want)
	}
}

// TestNextHopsWithQueuedMailArePinned: while mail waits for a destination,
// its name is pinned in the resolver (refreshed ahead of expiry, never
// evicted), so a later DNS outage cannot strand the queue.
func TestNextHopsWithQueuedMailArePinned(t *testing.T) {
	res, _ := realResolver(t, testZone)
	f := mxFixture(t, res, "")
	f.r.router.mxPort = freePort(t, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5") // nobody listens: mail stays queued
	f.r.Start()
	id := f.put("a@example.org", "u@dest.test")
	deadline := time.Now().Add(10 * time.Second)
	for {
		env, err := f.spool.Envelope(id)
		if err != nil {
			t.Fatal(err)
		}
		if env.Attempts > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no delivery attempt within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.r.updatePins()
	if got := fmt.Sprint(f.r.pinned); got != "[dest.test]" {
		t.Fatalf("pinned %s, want [dest.test]", got)
	}
	if n := res.Stats().Pinned; n < 1 {
		t.Fatalf("resolver reports %d pinned names", n)
	}
}
