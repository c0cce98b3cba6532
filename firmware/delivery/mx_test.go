package delivery

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mxbox/mxbox/storage"
)

// mxFixture runs in mx mode; every MX host listens on port `port` of its
// own loopback address (the port stands in for 25).
func mxFixture(t *testing.T, res Resolver, extra string) *fixture {
	return newFixture(t, "mode = \"mx\"\nsmarthosts = []\n"+extra+keepDSNs(t), res)
}

// mxPort makes MX hosts use a test port instead of 25: tests route each
// domain explicitly, so the resolver's MX answers are what is exercised.
func TestMXPrimaryDownSecondaryUsed(t *testing.T) {
	port := freePort(t, "127.0.0.2", "127.0.0.3")
	s := startSink(t, "127.0.0.3", sinkOpts{port: port})
	res := newFakeResolver()
	res.mx["dest.test"] = []*net.MX{{Host: "mx1.dest.test.", Pref: 10}, {Host: "mx2.dest.test.", Pref: 20}}
	res.hosts["mx1.dest.test"] = addrs("127.0.0.2")
	res.hosts["mx2.dest.test"] = addrs("127.0.0.3")
	f := mxFixture(t, res, "")
	f.r.router.mxPort = port
	f.r.Start()
	id := f.put("a@example.org", "u@dest.test")
	f.waitGone(id, 5*time.Second)
	s.waitMessages(t, 1, time.Second)
}

func TestMXImplicitWhenNoMXRecords(t *testing.T) {
	port := freePort(t, "127.0.0.4")
	s := startSink(t, "127.0.0.4", sinkOpts{port: port})
	res := newFakeResolver()
	res.hosts["plain.test"] = addrs("127.0.0.4")
	f := mxFixture(t, res, "")
	f.r.router.mxPort = port
	f.r.Start()
	id := f.put("a@example.org", "u@plain.test")
	f.waitGone(id, 5*time.Second)
	s.waitMessages(t, 1, time.Second)
}

func TestMXNullMXFailsWithDSN(t *testing.T) {
	res := newFakeResolver()
	res.mx["nomail.test"] = []*net.MX{{Host: ".", Pref: 0}}
	f := mxFixture(t, res, "")
	f.r.Start()
	id := f.put("a@example.org", "u@nomail.test")
	f.waitGone(id, 5*time.Second)
	ds := f.parsedDSNs()
	if len(ds) != 1 || ds[0].Recipients[0].Get("Status") != "5.1.10" || ds[0].Recipients[0].Get("Action") != "failed" {
		t.Fatalf("null MX DSN: %+v", ds)
	}
}

func TestMXNXDomainIsPermanentServfailIsTemporary(t *testing.T) {
	res := newFakeResolver()
	res.mxErr["flaky.test"] = errFakeTemp
	f := mxFixture(t, res, "")
	f.r.Start()
	nx := f.put("a@example.org", "u@nonexistent.test")
	sf := f.put("a@example.org", "u@flaky.test")
	f.waitGone(nx, 5*time.Second)
	e := f.waitAttempts(sf, 1, 5*time.Second)
	if rc := e.Recipients[0]; rc.State != storage.RcptPending || rc.Status != "4.4.3" {
		t.Errorf("SERVFAIL: %+v, want pending 4.4.3", rc)
	}
	ds := f.parsedDSNs()
	if len(ds) != 1 {
		t.Fatalf("%d DSNs, want 1 (NXDOMAIN only)", len(ds))
	}
	rb := ds[0].Recipients[0]
	if rb.Get("Final-Recipient") != "rfc822; u@nonexistent.test" || rb.Get("Status") != "5.1.2" {
		t.Errorf("NXDOMAIN DSN: %v", rb)
	}
}

func TestMXBackupOnlyTriesBetterPreferences(t *testing.T) {
	port := freePort(t, "127.0.0.2", "127.0.0.3")
	worse := startSink(t, "127.0.0.3", sinkOpts{port: port})
	res := newFakeResolver()
	res.mx["cust.test"] = []*net.MX{
		{Host: "primary.cust.test.", Pref: 10}, {Host: "mxbox.test.", Pref: 20}, {Host: "third.cust.test.", Pref: 30},
	}
	res.hosts["primary.cust.test"] = addrs("127.0.0.2") // down
	res.hosts["third.cust.test"] = addrs("127.0.0.3")
	f := mxFixture(t, res, "")
	f.r.router.mxPort = port
	f.r.Start()
	id := f.put("a@example.org", "u@cust.test")
	e := f.waitAttempts(id, 1, 5*time.Second)
	if e.Recipients[0].State != storage.RcptPending {
		t.Fatalf("backup MX with primary down: %+v", e.Recipients[0])
	}
	if len(worse.Messages()) != 0 {
		t.Errorf("mail sent to an MX with a worse preference than ours")
	}
	// Primary comes back: delivered there.
	prim := startSink(t, "127.0.0.2", sinkOpts{port: port})
	f.r.Flush("", "")
	f.waitGone(id, 5*time.Second)
	prim.waitMessages(t, 1, time.Second)
}

func TestMXWeAreBestIsRetryNotBounce(t *testing.T) {
	res := newFakeResolver()
	res.mx["loop.test"] = []*net.MX{{Host: "mxbox.test.", Pref: 10}}
	f := mxFixture(t, res, "")
	f.r.Start()
	id := f.put("a@example.org", "u@loop.test")
	e := f.waitAttempts(id, 1, 5*time.Second)
	if rc := e.Recipients[0]; rc.State != storage.RcptPending || !strings.Contains(rc.LastError, "loops back") {
		t.Errorf("%+v", rc)
	}
}

func TestMXGroupsRecipientsByDomain(t *testing.T) {
	port := freePort(t, "127.0.0.2", "127.0.0.3")
	s1 := startSink(t, "127.0.0.2", sinkOpts{port: port})
	s2 := startSink(t, "127.0.0.3", sinkOpts{port: port})
	res := newFakeResolver()
	res.mx["one.test"] = []*net.MX{{Host: "mx.one.test.", Pref: 10}}
	res.mx["two.test"] = []*net.MX{{Host: "mx.two.test.", Pref: 10}}
	res.hosts["mx.one.test"] = addrs("127.0.0.2")
	res.hosts["mx.two.test"] = addrs("127.0.0.3")
	f := mxFixture(t, res, "")
	f.r.router.mxPort = port
	f.r.Start()
	id := f.put("a@example.org", "x@one.test", "y@two.test", "z@one.test")
	f.waitGone(id, 5*time.Second)
	m1, m2 := s1.waitMessages(t, 1, time.Second), s2.waitMessages(t, 1, time.Second)
	if fmt.Sprint(m1[0].Rcpts) != "[x@one.test z@one.test]" || fmt.Sprint(m2[0].Rcpts) != "[y@two.test]" {
		t.Errorf("one.test got %v, two.test got %v", m1[0].Rcpts, m2[0].Rcpts)
	}
}
