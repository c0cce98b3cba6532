package resolver

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/mxbox/mxbox/firmware/config"
)

// fuzzResolver has no upstream at all (nothing leaves the process): static
// records, one cached answer, and SERVFAIL for everything else.
func fuzzResolver(t testing.TB) *Resolver {
	cfg := baseConfig()
	cfg.Listen = ""
	cfg.Records = []config.DNSRecord{
		{Name: "static.test", Type: "A", Value: "192.0.2.1"},
		{Name: "static.test", Type: "MX", Value: "10 static.test"},
	}
	clk := newClock()
	r, err := New(cfg, Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	up := new(dns.Msg)
	up.SetQuestion("big.test.", dns.TypeMX)
	for i := range 40 {
		up.Answer = append(up.Answer, &dns.MX{Hdr: dns.RR_Header{Name: "big.test.", Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 300},
			Preference: uint16(i), Mx: "mail-exchanger-with-a-long-name.big.test."})
	}
	key := string(appendKey(nil, mustWireName("big.test."), dns.TypeMX, dns.ClassINET, false))
	e, err := r.makeEntry(key, "big.test.", dns.TypeMX, up, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	r.cache.put(e)
	return r
}

// FuzzPacketPath feeds arbitrary bytes to the query path exactly as the
// listeners do. Every reply must parse, carry the query's ID, and fit the
// client's buffer on UDP.
func FuzzPacketPath(f *testing.F) {
	for _, q := range seedQueries() {
		f.Add(q)
	}
	r := fuzzResolver(f)
	lo := netip.MustParseAddr("127.0.0.1")
	f.Fuzz(func(t *testing.T, p []byte) {
		for _, tcp := range []bool{false, true} {
			resp, slow := r.fastPath(nil, p, lo, tcp)
			if slow {
				resp = r.slowPath(nil, p, tcp)
			}
			if resp == nil {
				continue
			}
			m := new(dns.Msg)
			if err := m.Unpack(resp); err != nil {
				t.Fatalf("reply does not parse: %v\nquery %x\nreply %x", err, p, resp)
			}
			if m.Id != binary.BigEndian.Uint16(p) || !m.Response {
				t.Fatalf("reply id %d / QR %v for query id %d", m.Id, m.Response, binary.BigEndian.Uint16(p))
			}
			if q, _, _ := parseQuery(p); !tcp && len(resp) > replyLimit(&q, false) {
				t.Fatalf("UDP reply %d bytes > limit %d", len(resp), replyLimit(&q, false))
			}
		}
	})
}

// FuzzSnapshot feeds arbitrary bytes to the snapshot loader: flash can hold
// anything after a power cut; loading must never panic.
func FuzzSnapshot(f *testing.F) {
	r := fuzzResolver(f)
	f.Add(r.encodeSnapshot(newClock().Now()))
	f.Add([]byte(snapshotMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		r2, _ := New(baseConfig(), Options{Now: newClock().Now})
		r2.decodeSnapshot(data, newClock().Now()) //nolint:errcheck
	})
}

func seedQueries() [][]byte {
	var out [][]byte
	add := func(m *dns.Msg) {
		b, err := m.Pack()
		if err == nil {
			out = append(out, b)
		}
	}
	for _, c := range []struct {
		name  string
		qtype uint16
		edns  bool
		do    bool
	}{
		{"static.test.", dns.TypeA, false, false},
		{"STATIC.test.", dns.TypeMX, true, false},
		{"static.test.", dns.TypeAAAA, true, true},
		{"big.test.", dns.TypeMX, false, false},
		{"big.test.", dns.TypeMX, true, false},
		{"unknown.test.", dns.TypeA, true, false},
		{".", dns.TypeNS, false, false},
		{"big.test.", dns.TypeAXFR, false, false},
	} {
		m := new(dns.Msg)
		m.SetQuestion(c.name, c.qtype)
		m.Id = 0x1234
		if c.edns {
			m.SetEdns0(4096, c.do)
		}
		add(m)
	}
	m := new(dns.Msg)
	m.SetQuestion("big.test.", dns.TypeMX)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	add(m)
	m = new(dns.Msg)
	m.SetQuestion("big.test.", dns.TypeMX)
	m.Opcode = dns.OpcodeNotify
	add(m)
	out = append(out, []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1}) // compression pointer in question
	return out
}
