package e2e

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mxbox/mxbox/firmware/resolver/dnstest"
	"github.com/mxbox/mxbox/test/harness"
)

// sink is an upstream MTA on loopback that accepts everything and counts it.
type sink struct {
	mu   sync.Mutex
	msgs int
	srv  *smtp.Server
}

func (s *sink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{s}, nil }

type sinkSession struct{ s *sink }

func (ss *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (ss *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (ss *sinkSession) Data(r io.Reader) error {
	io.Copy(io.Discard, r)
	ss.s.mu.Lock()
	ss.s.msgs++
	ss.s.mu.Unlock()
	return nil
}
func (ss *sinkSession) Reset()        {}
func (ss *sinkSession) Logout() error { return nil }

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msgs
}

func startSink(t *testing.T, addr string) *sink {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{}
	s.srv = smtp.NewServer(s)
	s.srv.Domain = "sink.test"
	go s.srv.Serve(l)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

// TestUpstreamAndDNSOutageThenInstantDrain is the seed scenario: the ISP's
// mail relay and its DNS both go down. mxbox keeps accepting and queueing;
// when the relay comes back — DNS still down — everything queued is
// delivered within seconds, its address coming from the resolver's stale cache.
func TestUpstreamAndDNSOutageThenInstantDrain(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.8:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dnsUp := dnstest.Start(t, `
$TTL 1
isp.test.        IN SOA ns.isp.test. host.isp.test. 1 3600 600 86400 1
isp.test.        IN NS  ns.isp.test.
ns.isp.test.     IN A   127.0.0.1
relay.isp.test.  IN A   127.0.0.8
`)
	dir := t.TempDir()
	d := harness.Start(t, dir, harness.Config(dir, "",
		fmt.Sprintf(`smarthosts = ["relay.isp.test:%d"]
probe_interval = "1s"`, port),
		`listen = "127.0.0.1:0"
forwarders = ["`+dnsUp.Addr+`"]`))
	const n = 20
	for i := 0; i < n; i++ {
		body := []byte(fmt.Sprintf("Subject: %d\r\n\r\nqueued during the outage\r\n", i))
		rep, err := harness.SendMail(d.Addrs["smtp"], "a@customer.test", []string{fmt.Sprintf("u%d@elsewhere.test", i)}, body)
		if _, ok := harness.QueuedID(rep); err != nil || !ok {
			t.Fatalf("accepting during the outage: %q %v", rep, err)
		}
	}
	if got := d.QueueStats(t).Messages; got != n {
		t.Fatalf("%d queued, want %d", got, n)
	}
	dnsUp.SetDown(true)
	time.Sleep(1500 * time.Millisecond) // the relay's A record (TTL 1 s) is now stale

	s := startSink(t, fmt.Sprintf("127.0.0.8:%d", port))
	start := time.Now()
	for s.count() < n {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%d of %d delivered 10 s after the relay came back\n%s", s.count(), n, d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("relay back: all %d queued messages delivered in %v (DNS still down)", n, time.Since(start).Round(time.Millisecond))
	for deadline := time.Now().Add(5 * time.Second); d.QueueStats(t).Messages != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("delivered messages not removed from the spool: %d left", d.QueueStats(t).Messages)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
