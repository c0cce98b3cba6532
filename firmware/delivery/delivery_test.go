package delivery

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mxbox/mxbox/storage"
)

func smarthosts(hosts ...string) string {
	q := make([]string, len(hosts))
	for i, h := range hosts {
		q[i] = fmt.Sprintf("%q", h)
	}
	return "smarthosts = [" + strings.Join(q, ", ") + "]\n"
}

// deadAddr is a loopback address:port where nothing listens (connection
// refused at once).
func deadAddr(t *testing.T, ip string) string {
	return fmt.Sprintf("%s:%d", ip, freePort(t, ip))
}

// keepDSNs routes the test senders' domain (example.org) to a dead host, so
// DSNs stay in the spool where the test reads them.
func keepDSNs(t *testing.T) string {
	return fmt.Sprintf("\n[[delivery.routes]]\nname = \"senders\"\ndomains = [\"example.org\"]\nhosts = [%q]\n", deadAddr(t, "127.0.0.9"))
}

func TestDeliversWithOurHostnameAndRemovesMessage(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	f := newFixture(t, smarthosts(s.Addr), nil)
	f.r.Start()
	id := f.put("alice@example.org", "bob@example.net", "carol@example.com")
	f.waitGone(id, 5*time.Second)
	m := s.waitMessages(t, 1, time.Second)
	if m[0].Helo != "mxbox.test" {
		t.Errorf("EHLO %q, want our hostname mxbox.test", m[0].Helo)
	}
	if m[0].From != "alice@example.org" || strings.Join(m[0].Rcpts, ",") != "bob@example.net,carol@example.com" {
		t.Errorf("envelope %q → %v", m[0].From, m[0].Rcpts)
	}
	if !strings.Contains(string(m[0].Body), "Hello.") {
		t.Errorf("body not delivered: %q", m[0].Body)
	}
	if st := f.r.Stats(); st.Delivered != 2 || st.Queue.Messages != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestNewMessageAttemptedImmediatelyNotAtNextQueueRun(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	f := newFixture(t, smarthosts(s.Addr), nil)
	f.r.Start()
	// Let the scheduler go idle (its next wake is far away).
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	id := f.put("a@example.org", "b@example.net")
	f.waitGone(id, 2*time.Second)
	if d := time.Since(start); d > time.Second {
		t.Errorf("delivery took %v after Notify", d)
	}
}

func TestPrimaryDownSecondaryUsed(t *testing.T) {
	dead := deadAddr(t, "127.0.0.2")
	s := startSink(t, "127.0.0.3", sinkOpts{})
	f := newFixture(t, smarthosts(dead, s.Addr), nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitGone(id, 5*time.Second)
	s.waitMessages(t, 1, time.Second)
}

func TestConnectionReusedForSeveralMessages(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	f := newFixture(t, smarthosts(s.Addr), nil)
	var ids []string
	for i := range 40 {
		ids = append(ids, f.put("a@example.org", fmt.Sprintf("r%d@example.net", i)))
	}
	f.r.Start()
	for _, id := range ids {
		f.waitGone(id, 10*time.Second)
	}
	s.waitMessages(t, 40, time.Second)
	if c := s.Conns(); c > 4 {
		t.Errorf("%d connections for 40 messages; want at most hop_concurrency (4)", c)
	}
}

func TestAllDownQueuedThenOneComesUpDeliveredWithin5s(t *testing.T) {
	port := freePort(t, "127.0.0.2", "127.0.0.3")
	a, b := fmt.Sprintf("127.0.0.2:%d", port), fmt.Sprintf("127.0.0.3:%d", port)
	f := newFixture(t, smarthosts(a, b), nil)
	f.r.Start()
	var ids []string
	for i := range 5 {
		ids = append(ids, f.put("a@example.org", fmt.Sprintf("r%d@example.net", i)))
	}
	for _, id := range ids {
		e := f.waitAttempts(id, 1, 5*time.Second)
		if e.Recipients[0].State != storage.RcptPending {
			t.Fatalf("outage must not bounce: %+v", e.Recipients[0])
		}
	}
	waitFor(t, 2*time.Second, "hop marked down", func() bool { return !f.r.Health().OK })
	if len(f.parsedDSNs()) != 0 {
		t.Fatal("a DSN was sent for an upstream outage")
	}
	// The backoff says 5 minutes (fake clock, never advanced): only the
	// probe can bring these back.
	up := time.Now()
	s := startSink(t, "127.0.0.3", sinkOpts{port: port})
	for _, id := range ids {
		f.waitGone(id, 5*time.Second)
	}
	s.waitMessages(t, 5, time.Second)
	t.Logf("all delivered %v after the upstream came back", time.Since(up))
	if d := time.Since(up); d > 5*time.Second {
		t.Errorf("recovery took %v, want ≤ 5s", d)
	}
	if !f.r.Health().OK {
		t.Errorf("hop still down: %+v", f.r.Stats().Hops)
	}
}

func TestEqualPreferencesSpreadLoad(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	var sinks []*sink
	var hosts []string
	for _, ip := range ips {
		s := startSink(t, ip, sinkOpts{})
		sinks = append(sinks, s)
		hosts = append(hosts, "10 "+s.Addr)
	}
	// A worse-preference host must never be used while the better ones work.
	worse := startSink(t, "127.0.0.5", sinkOpts{})
	hosts = append(hosts, "20 "+worse.Addr)
	// No session reuse, so every message makes a fresh choice.
	f := newFixture(t, smarthosts(hosts...)+"idle_timeout = \"0s\"\n", nil)
	const n = 150
	var ids []string
	for i := range n {
		ids = append(ids, f.put("a@example.org", fmt.Sprintf("r%d@example.net", i)))
	}
	f.r.Start()
	for _, id := range ids {
		f.waitGone(id, 20*time.Second)
	}
	for i, s := range sinks {
		got := len(s.Messages())
		// Binomial(150, 1/3): mean 50, sd ≈ 5.8; 25 is > 4 sd away.
		if got < 25 {
			t.Errorf("sink %s got %d of %d messages; equal preferences must share", ips[i], got, n)
		}
	}
	if len(worse.Messages()) != 0 {
		t.Errorf("preference-20 host used while preference-10 hosts worked")
	}
}

func TestEveryAddressOfHostTried(t *testing.T) {
	ips := []string{"127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"}
	port := freePort(t, ips...)
	res := newFakeResolver()
	res.hosts["relay.test"] = addrs(ips...)
	// Only the last address answers; the others refuse.
	s := startSink(t, "127.0.0.8", sinkOpts{port: port})
	f := newFixture(t, smarthosts(fmt.Sprintf("relay.test:%d", port)), res)
	f.r.Start()
	for i := range 8 {
		id := f.put("a@example.org", fmt.Sprintf("r%d@example.net", i))
		f.waitGone(id, 5*time.Second)
	}
	s.waitMessages(t, 8, time.Second)
	if st := f.r.Stats(); st.Deferred != 0 {
		t.Errorf("%d deferrals: every address must be tried within one attempt", st.Deferred)
	}
}

func TestMaxAddressesCapsOneAttempt(t *testing.T) {
	ips := []string{"127.0.0.5", "127.0.0.6", "127.0.0.7"}
	port := freePort(t, ips...)
	res := newFakeResolver()
	res.hosts["relay.test"] = addrs(ips...)
	f := newFixture(t, smarthosts(fmt.Sprintf("relay.test:%d", port))+"max_addresses = 1\nidle_timeout = \"0s\"\ndown_after = 100\n", res)
	// Only one address answers; with a cap of one, some attempts miss it.
	s := startSink(t, "127.0.0.7", sinkOpts{port: port})
	f.r.Start()
	var ids []string
	for i := range 12 {
		ids = append(ids, f.put("a@example.org", fmt.Sprintf("r%d@example.net", i)))
	}
	waitFor(t, 5*time.Second, "every message tried once", func() bool {
		for _, id := range ids {
			if e := f.env(id); e != nil && e.Attempts == 0 {
				return false
			}
		}
		return true
	})
	if got := len(s.Messages()); got == 12 || f.r.Stats().Deferred == 0 {
		t.Errorf("%d of 12 delivered at once with max_addresses = 1 and 1 of 3 addresses up; cap not applied", got)
	}
}

func TestFallbackRelayAfterEverySmarthostFailed(t *testing.T) {
	fb := startSink(t, "127.0.0.4", sinkOpts{})
	f := newFixture(t, smarthosts(deadAddr(t, "127.0.0.2"), deadAddr(t, "127.0.0.3"))+
		fmt.Sprintf("fallback_relay = [%q]\n", fb.Addr), nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitGone(id, 5*time.Second)
	fb.waitMessages(t, 1, time.Second)
}

func TestPerRecipient5xxAnd250OneDSNNamingTheRightRecipient(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	s.SetRcptErr("bad@example.net", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	f := newFixture(t, smarthosts(s.Addr), nil)
	f.r.Start()
	id := f.putEnv(&storage.Envelope{From: "alice@example.org", EnvID: "env-42", Recipients: []storage.Recipient{
		{Addr: "good@example.net"}, {Addr: "bad@example.net", ORcpt: "rfc822;Bad@Example.net"},
	}})
	f.waitGone(id, 5*time.Second)
	msgs := s.waitMessages(t, 2, 5*time.Second) // the message, then the DSN
	var orig, dsn *sunk
	for i := range msgs {
		if msgs[i].From == "" {
			dsn = &msgs[i]
		} else {
			orig = &msgs[i]
		}
	}
	if orig == nil || strings.Join(orig.Rcpts, ",") != "good@example.net" {
		t.Fatalf("original delivered to %v, want only good@", orig)
	}
	if dsn == nil || strings.Join(dsn.Rcpts, ",") != "alice@example.org" {
		t.Fatalf("DSN %+v: want one to the sender from <>", dsn)
	}
	p := parseDSN(t, dsn.Body)
	if p.ReportType != "delivery-status" {
		t.Errorf("report-type %q", p.ReportType)
	}
	if got := p.Message.Get("Reporting-MTA"); got != "dns; mxbox.test" {
		t.Errorf("Reporting-MTA %q", got)
	}
	if got := p.Message.Get("Original-Envelope-Id"); got != "env-42" {
		t.Errorf("Original-Envelope-Id %q", got)
	}
	if len(p.Recipients) != 1 {
		t.Fatalf("%d recipient blocks, want 1: %+v", len(p.Recipients), p.Recipients)
	}
	rb := p.Recipients[0]
	want := map[string]string{
		"Final-Recipient":    "rfc822; bad@example.net",
		"Original-Recipient": "rfc822; Bad@Example.net",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Diagnostic-Code":    "smtp; 550 5.1.1 no such user",
		"Remote-Mta":         "dns; 127.0.0.2",
	}
	for k, v := range want {
		if got := rb.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	if !strings.Contains(p.Returned, "text/rfc822-headers") || !strings.Contains(string(p.Original), "Subject: test") {
		t.Errorf("returned part %q %q: want the original headers", p.Returned, p.Original)
	}
}

func TestDSNForDSNIsNeverSent(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	s.SetRcptErr("gone@example.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "gone"})
	f := newFixture(t, smarthosts(s.Addr), nil)
	f.r.Start()
	id := f.put("", "gone@example.org")
	f.waitGone(id, 5*time.Second)
	time.Sleep(200 * time.Millisecond)
	if n := f.spool.Stats().Messages; n != 0 || len(s.Messages()) != 0 {
		t.Errorf("a failed DSN produced %d queued, %d sent; want none", n, len(s.Messages()))
	}
}

func Test4xxRetriesWithBackoffThenDelivers(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	s.SetRcptErr("b@example.net", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"})
	f := newFixture(t, smarthosts(s.Addr), nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	e := f.waitAttempts(id, 1, 5*time.Second)
	rc := e.Recipients[0]
	if rc.State != storage.RcptPending || rc.Status != "4.3.0" || !strings.Contains(rc.LastError, "451 4.3.0 try later") {
		t.Fatalf("after 4xx: %+v", rc)
	}
	// retry_min default 5m, jitter pinned to the middle.
	if got := e.NextAttempt.Sub(f.clock.Now()); got != 5*time.Minute {
		t.Errorf("next attempt in %v, want 5m", got)
	}
	if len(f.dsns()) != 0 {
		t.Errorf("DSN sent for a 4xx")
	}
	s.SetRcptErr("b@example.net", nil)
	f.clock.Advance(5 * time.Minute)
	f.r.kick()
	f.waitGone(id, 5*time.Second)
	s.waitMessages(t, 1, time.Second)
}

func TestSoftBounceTurns5xxIntoRetry(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	s.SetRcptErr("b@example.net", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no"})
	f := newFixture(t, smarthosts(s.Addr)+"soft_bounce = true\n", nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	e := f.waitAttempts(id, 1, 5*time.Second)
	if rc := e.Recipients[0]; rc.State != storage.RcptPending || rc.Status != "4.1.1" {
		t.Errorf("soft bounce: %+v", rc)
	}
	if len(f.dsns()) != 0 {
		t.Errorf("DSN sent under soft_bounce")
	}
}

func TestMAIL5xxFailsEveryRecipient(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	s.SetMailErr(&smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "sender rejected"})
	f := newFixture(t, smarthosts(s.Addr)+keepDSNs(t), nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net", "c@example.net")
	f.waitGone(id, 5*time.Second)
	ds := f.parsedDSNs()
	if len(ds) != 1 || len(ds[0].Recipients) != 2 || ds[0].Recipients[1].Get("Status") != "5.7.1" {
		t.Fatalf("want one DSN with two 5.7.1 recipients, got %+v", ds)
	}
}

func TestLifetimeExpiryFailsWithDSN(t *testing.T) {
	f := newFixture(t, smarthosts(deadAddr(t, "127.0.0.2")), nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitAttempts(id, 1, 5*time.Second)
	f.clock.Advance(5*24*time.Hour + time.Minute)
	f.r.kick()
	f.waitGone(id, 5*time.Second)
	ds := f.parsedDSNs()
	if len(ds) != 1 || len(ds[0].Recipients) != 1 {
		t.Fatalf("want one DSN, got %d", len(ds))
	}
	rb := ds[0].Recipients[0]
	if rb.Get("Action") != "failed" || rb.Get("Status") != "5.4.7" || !strings.Contains(rb.Get("Diagnostic-Code"), "delivery time expired") {
		t.Errorf("expiry DSN fields: %v", rb)
	}
}

func TestDelayWarningOnceAfterConfiguredTime(t *testing.T) {
	f := newFixture(t, smarthosts(deadAddr(t, "127.0.0.2"))+"delay_warning = \"4h\"\nretry_max = \"1h\"\n", nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitAttempts(id, 1, 5*time.Second)
	if len(f.dsns()) != 0 {
		t.Fatal("delay warning before 4h")
	}
	f.clock.Advance(4*time.Hour + time.Minute)
	f.r.kick()
	waitFor(t, 5*time.Second, "delay DSN", func() bool { return len(f.dsns()) == 1 })
	ds := f.parsedDSNs()
	rb := ds[0].Recipients[0]
	if rb.Get("Action") != "delayed" || !strings.HasPrefix(rb.Get("Status"), "4.") || rb.Get("Will-Retry-Until") == "" {
		t.Errorf("delay DSN fields: %v", rb)
	}
	e := f.env(id)
	if e == nil || !e.DelayWarned || e.Recipients[0].State != storage.RcptPending {
		t.Fatalf("message after warning: %+v", e)
	}
	// Later attempts do not warn again.
	f.clock.Advance(2 * time.Hour)
	f.r.kick()
	f.waitAttempts(id, e.Attempts+1, 5*time.Second)
	if n := len(f.dsns()); n != 1 {
		t.Errorf("%d DSNs after a second deferral, want 1", n)
	}
}

func TestNotifyNeverSuppressesDSN(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	s.SetRcptErr("b@example.net", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no"})
	f := newFixture(t, smarthosts(s.Addr), nil)
	f.r.Start()
	id := f.putEnv(&storage.Envelope{From: "a@example.org", Recipients: []storage.Recipient{{Addr: "b@example.net", Notify: []string{"NEVER"}}}})
	f.waitGone(id, 5*time.Second)
	if len(f.dsns()) != 0 || len(s.Messages()) != 0 {
		t.Error("DSN sent despite NOTIFY=NEVER")
	}
}

func TestPerDomainRouteToCustomerServer(t *testing.T) {
	customer := startSink(t, "127.0.0.2", sinkOpts{})
	isp := startSink(t, "127.0.0.3", sinkOpts{})
	text := smarthosts(isp.Addr) + fmt.Sprintf(`
[[delivery.routes]]
name = "customer"
accepted_domains = true
hosts = [%q]
`, customer.Addr)
	text = strings.Replace(text, "", "", 1)
	f := newFixtureWith(t, "[smtp]\naccepted_domains = [\"customer.test\"]\n", text, nil)
	f.r.Start()
	id1 := f.put("x@example.org", "boss@customer.test")
	id2 := f.put("boss@customer.test", "friend@example.net")
	f.waitGone(id1, 5*time.Second)
	f.waitGone(id2, 5*time.Second)
	if m := customer.Messages(); len(m) != 1 || m[0].Rcpts[0] != "boss@customer.test" {
		t.Errorf("customer server got %+v", m)
	}
	if m := isp.Messages(); len(m) != 1 || m[0].Rcpts[0] != "friend@example.net" {
		t.Errorf("smarthost got %+v", m)
	}
}

func TestTLSRequiredVerifiedWithAuth(t *testing.T) {
	srvTLS, caFile := testCert(t, "relay.test")
	port := freePort(t, "127.0.0.2")
	s := startSink(t, "127.0.0.2", sinkOpts{port: port, tls: srvTLS, user: "box", pass: "s3cret"})
	res := newFakeResolver()
	res.hosts["relay.test"] = addrs("127.0.0.2")
	f := newFixture(t, smarthosts(fmt.Sprintf("relay.test:%d", port))+fmt.Sprintf(
		"tls = \"required\"\ntls_ca_file = %q\nauth_user = \"box\"\nauth_password = \"s3cret\"\n", caFile), res)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitGone(id, 5*time.Second)
	m := s.waitMessages(t, 1, time.Second)
	if !m[0].TLS || m[0].Auth != "box" || m[0].Helo != "mxbox.test" {
		t.Errorf("delivered with TLS=%v auth=%q helo=%q; want TLS, box, mxbox.test", m[0].TLS, m[0].Auth, m[0].Helo)
	}
}

func TestTLSRequiredButUnverifiableIsRetryNotBounce(t *testing.T) {
	srvTLS, _ := testCert(t, "relay.test") // CA not given to the runner
	s := startSink(t, "127.0.0.2", sinkOpts{tls: srvTLS})
	f := newFixture(t, smarthosts(s.Addr)+"tls = \"required\"\n", nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	e := f.waitAttempts(id, 1, 5*time.Second)
	if rc := e.Recipients[0]; rc.State != storage.RcptPending || !strings.Contains(rc.LastError, "TLS") {
		t.Errorf("after TLS failure: %+v", rc)
	}
	if len(s.Messages()) != 0 || len(f.dsns()) != 0 {
		t.Error("sent in clear or bounced")
	}
}

func TestOpportunisticTLSUsedWhenOffered(t *testing.T) {
	srvTLS, _ := testCert(t, "relay.test")
	s := startSink(t, "127.0.0.2", sinkOpts{tls: srvTLS})
	f := newFixture(t, smarthosts(s.Addr)+"tls = \"opportunistic\"\n", nil)
	plain := startSink(t, "127.0.0.3", sinkOpts{})
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitGone(id, 5*time.Second)
	if m := s.waitMessages(t, 1, time.Second); !m[0].TLS || m[0].Helo != "mxbox.test" {
		t.Errorf("TLS=%v helo=%q", m[0].TLS, m[0].Helo)
	}
	_ = plain
}

func TestAuthFailureTowardSmarthostIsRetry(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{user: "box", pass: "right"})
	f := newFixture(t, smarthosts(s.Addr)+"auth_user = \"box\"\nauth_password = \"wrong\"\n", nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	e := f.waitAttempts(id, 1, 5*time.Second)
	if rc := e.Recipients[0]; rc.State != storage.RcptPending || !strings.Contains(rc.LastError, "AUTH") {
		t.Errorf("after AUTH failure: %+v", rc)
	}
	if len(f.dsns()) != 0 {
		t.Error("bounced on AUTH failure")
	}
}

func TestSizeLimitOfUpstreamRespected(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{maxBytes: 64})
	f := newFixture(t, smarthosts(s.Addr)+keepDSNs(t), nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitGone(id, 5*time.Second)
	ds := f.parsedDSNs()
	if len(ds) != 1 || ds[0].Recipients[0].Get("Status") != "5.3.4" {
		t.Fatalf("want a 5.3.4 DSN for an oversize message, got %+v", ds)
	}
}

func TestScheduleBatchesSmallerThanQueue(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	f := newFixture(t, smarthosts(s.Addr), nil)
	f.r.batch = 4
	for i := range 60 {
		env := &storage.Envelope{From: "a@example.org", Recipients: []storage.Recipient{{Addr: fmt.Sprintf("r%d@example.net", i)}}}
		if _, err := f.spool.Put(env, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	f.r.Start()
	s.waitMessages(t, 60, 10*time.Second)
	waitFor(t, 5*time.Second, "queue empty", func() bool { return f.spool.Stats().Messages == 0 })
}

func TestCloseLeavesUnfinishedMailQueued(t *testing.T) {
	f := newFixture(t, smarthosts(deadAddr(t, "127.0.0.2")), nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitAttempts(id, 1, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if e := f.env(id); e == nil || e.Recipients[0].State != storage.RcptPending {
		t.Fatalf("after Close: %+v", e)
	}
}

// stalling upstream: accepts TCP but never greets.
func TestStalledUpstreamDoesNotStallQueue(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	s := startSink(t, "127.0.0.3", sinkOpts{})
	f := newFixture(t, smarthosts(ln.Addr().String(), s.Addr)+"greeting_timeout = \"300ms\"\n", nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitGone(id, 5*time.Second)
}
