package dnstest

import (
	"testing"
	"time"

	"github.com/miekg/dns"
)

const testZone = `
$TTL 300
example.test.        IN SOA ns.example.test. host.example.test. 1 3600 600 86400 60
example.test.        IN NS  ns.example.test.
ns.example.test.     IN A   127.0.0.1
example.test.        IN MX  10 mx.example.test.
mx.example.test.     IN A   192.0.2.25
mx.example.test.     IN AAAA 2001:db8::25
www.example.test.    IN CNAME mx.example.test.
a.b.example.test.    IN TXT "deep"
sub.example.test.    IN NS  ns.sub.example.test.
ns.sub.example.test. IN A   127.0.0.3
`

func query(t *testing.T, net, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: net, Timeout: 500 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", net, name, dns.TypeToString[qtype], err)
	}
	return r
}

func TestAnswers(t *testing.T) {
	s := Start(t, testZone)
	cases := []struct {
		name    string
		qtype   uint16
		rcode   int
		answers int
		auth    bool
		ns      uint16 // type expected first in authority, 0 = empty
	}{
		{"example.test.", dns.TypeMX, dns.RcodeSuccess, 1, true, 0},
		{"MX.Example.Test.", dns.TypeA, dns.RcodeSuccess, 1, true, 0},
		{"www.example.test.", dns.TypeA, dns.RcodeSuccess, 2, true, 0},
		{"missing.example.test.", dns.TypeA, dns.RcodeNameError, 0, true, dns.TypeSOA},
		{"mx.example.test.", dns.TypeMX, dns.RcodeSuccess, 0, true, dns.TypeSOA},
		{"b.example.test.", dns.TypeA, dns.RcodeSuccess, 0, true, dns.TypeSOA}, // empty non-terminal
		{"host.sub.example.test.", dns.TypeA, dns.RcodeSuccess, 0, false, dns.TypeNS},
		{"other.invalid.", dns.TypeA, dns.RcodeRefused, 0, false, 0},
	}
	for _, c := range cases {
		r := query(t, "udp", s.Addr, c.name, c.qtype)
		if r.Rcode != c.rcode || len(r.Answer) != c.answers || r.Authoritative != c.auth {
			t.Errorf("%s %s: rcode %s answers %d aa %v, want %s %d %v\n%v", c.name, dns.TypeToString[c.qtype],
				dns.RcodeToString[r.Rcode], len(r.Answer), r.Authoritative, dns.RcodeToString[c.rcode], c.answers, c.auth, r)
		}
		if c.ns == 0 && len(r.Ns) > 0 || c.ns != 0 && (len(r.Ns) == 0 || r.Ns[0].Header().Rrtype != c.ns) {
			t.Errorf("%s: authority %v, want type %s", c.name, r.Ns, dns.TypeToString[c.ns])
		}
	}
	r := query(t, "tcp", s.Addr, "host.sub.example.test.", dns.TypeA)
	if len(r.Extra) != 1 || r.Extra[0].(*dns.A).A.String() != "127.0.0.3" {
		t.Errorf("referral glue = %v", r.Extra)
	}
	if s.Queries() != len(cases)+1 {
		t.Errorf("Queries() = %d, want %d", s.Queries(), len(cases)+1)
	}
}

func TestFailureModes(t *testing.T) {
	s := Start(t, testZone)
	s.SetRcode("mx.example.test.", dns.RcodeServerFailure)
	if r := query(t, "udp", s.Addr, "mx.example.test.", dns.TypeAAAA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("forced rcode: got %s", dns.RcodeToString[r.Rcode])
	}
	s.SetRcode("mx.example.test.", -1)
	if r := query(t, "udp", s.Addr, "mx.example.test.", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("cleared rcode: %v", r)
	}

	s.SetTruncateUDP(true)
	if r := query(t, "udp", s.Addr, "example.test.", dns.TypeMX); !r.Truncated || len(r.Answer) != 0 {
		t.Errorf("udp with truncation on: %v", r)
	}
	if r := query(t, "tcp", s.Addr, "example.test.", dns.TypeMX); r.Truncated || len(r.Answer) != 1 {
		t.Errorf("tcp with truncation on: %v", r)
	}
	s.SetTruncateUDP(false)

	c := &dns.Client{Net: "udp", Timeout: 100 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("example.test.", dns.TypeMX)
	s.SetDrop("example.test.", true)
	if _, _, err := c.Exchange(m, s.Addr); err == nil {
		t.Error("dropped name was answered")
	}
	s.SetDrop("example.test.", false)
	s.SetDown(true)
	if _, _, err := c.Exchange(m, s.Addr); err == nil {
		t.Error("down server answered")
	}
	s.SetDown(false)

	s.SetZone("$TTL 60\nexample.test. IN SOA ns. h. 2 1 1 1 1\nexample.test. IN MX 0 .\n")
	r := query(t, "udp", s.Addr, "example.test.", dns.TypeMX)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.MX).Mx != "." {
		t.Errorf("after SetZone: %v", r)
	}
	if s.QueriesFor("EXAMPLE.test") != 5 {
		t.Errorf("QueriesFor = %d, want 5", s.QueriesFor("example.test."))
	}
}

func TestStartOnOtherLoopback(t *testing.T) {
	s := StartOn(t, "127.0.0.2", testZone)
	if r := query(t, "udp", s.Addr, "example.test.", dns.TypeMX); len(r.Answer) != 1 {
		t.Fatalf("answer %v", r)
	}
}
