// Package dnstest is a scriptable authoritative DNS server on loopback for
// tests: resolver tests use it as forwarder and as a fake root/TLD/authority
// hierarchy, delivery tests use it to publish MX and address records.
//
// A Server answers from RFC 1035 master-file text the way a real authority
// does (authoritative answers, NXDOMAIN and NODATA with the SOA, CNAME chasing
// inside the data, referrals with glue below a delegation), and can be told to
// misbehave (SERVFAIL for a name, drop a name, drop everything, truncate every
// UDP answer) so failure handling is tested without touching the network.
// It only ever binds 127.0.0.0/8 or ::1 addresses that the caller chooses.
package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Server is one running authoritative server. Addr is "IP:PORT", the same
// port on UDP and TCP.
type Server struct {
	Addr string

	mu       sync.RWMutex
	zone     *zoneData
	rcodes   map[string]int
	drops    map[string]bool
	down     bool
	truncUDP bool

	queries atomic.Int64
	perName sync.Map // lower-case fqdn → *atomic.Int64

	udp, tcp *dns.Server
}

// zoneData is an immutable parsed zone, swapped as a whole by SetZone so a
// query never sees half of an update.
type zoneData struct {
	names map[string][]dns.RR // owner (lower-case fqdn) → records
	soa   map[string]*dns.SOA // apex → SOA
}

// Start parses zone and serves it on 127.0.0.1 with a kernel-chosen port.
// The server stops when the test ends. Zone errors fail the test.
func Start(t testing.TB, zone string) *Server { return StartOn(t, "127.0.0.1", zone) }

// StartOn is Start on a chosen loopback address such as "127.0.0.2", so a
// test can run several servers that look like distinct hosts (root, TLD,
// authority) for recursion.
func StartOn(t testing.TB, ip string, zone string) *Server {
	t.Helper()
	pc, ln, err := listenPair(ip)
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	return start(t, pc, ln, zone)
}

// StartAt serves on an exact "ip:port" (UDP and TCP). Recursion tests need
// it: referrals carry addresses but no ports, so a fake root, TLD and
// authority must share one port on different loopback addresses. It returns
// an error (not a test failure) when the port is taken, so the caller can
// pick another.
func StartAt(t testing.TB, addr string, zone string) (*Server, error) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return nil, err
	}
	return start(t, pc, ln, zone), nil
}

func start(t testing.TB, pc net.PacketConn, ln net.Listener, zone string) *Server {
	t.Helper()
	s, err := newServer(pc, ln, zone)
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Serve is Start for programs that are not tests (the benchmark harness's
// upstream): addr is "127.0.0.1:0" or an exact loopback "ip:port"; the
// caller stops it with Close.
func Serve(addr, zone string) (*Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var pc net.PacketConn
	var ln net.Listener
	if port == "0" {
		pc, ln, err = listenPair(host)
	} else if pc, err = net.ListenPacket("udp", addr); err == nil {
		if ln, err = net.Listen("tcp", addr); err != nil {
			pc.Close()
		}
	}
	if err != nil {
		return nil, err
	}
	return newServer(pc, ln, zone)
}

func newServer(pc net.PacketConn, ln net.Listener, zone string) (*Server, error) {
	z, err := parseZone(zone)
	if err != nil {
		pc.Close()
		ln.Close()
		return nil, err
	}
	s := &Server{zone: z, rcodes: map[string]int{}, drops: map[string]bool{}}
	s.Addr = pc.LocalAddr().String()
	s.udp = s.serve(&dns.Server{PacketConn: pc, Handler: s.handler(false)})
	s.tcp = s.serve(&dns.Server{Listener: ln, Handler: s.handler(true), ReadTimeout: 2 * time.Second, IdleTimeout: func() time.Duration { return 2 * time.Second }})
	return s, nil
}

// listenPair opens UDP on ip:0 and TCP on the same port; the TCP port can be
// taken by someone else, so it retries with a fresh UDP port a few times.
func listenPair(ip string) (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp %s: %v", ip, err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		lastErr = err
		pc.Close()
	}
	return nil, nil, fmt.Errorf("listen tcp on %s: %v", ip, lastErr)
}

func (s *Server) serve(srv *dns.Server) *dns.Server {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe() //nolint:errcheck // returns on Shutdown
	<-started
	return srv
}

// Close stops the server (tests need not call it: Start registers it).
func (s *Server) Close() {
	s.udp.Shutdown() //nolint:errcheck
	s.tcp.Shutdown() //nolint:errcheck
}

// SetZone replaces every record atomically. It panics on a syntax error:
// tests call it with literal text.
func (s *Server) SetZone(zone string) {
	z, err := parseZone(zone)
	if err != nil {
		panic("dnstest: " + err.Error())
	}
	s.mu.Lock()
	s.zone = z
	s.mu.Unlock()
}

// SetRcode answers every query for name (any type) with rcode, e.g.
// dns.RcodeServerFailure. A negative rcode clears the override.
func (s *Server) SetRcode(name string, rcode int) {
	n := canon(name)
	s.mu.Lock()
	if rcode < 0 {
		delete(s.rcodes, n)
	} else {
		s.rcodes[n] = rcode
	}
	s.mu.Unlock()
}

// SetDrop makes queries for name go unanswered (the client times out).
func (s *Server) SetDrop(name string, drop bool) {
	n := canon(name)
	s.mu.Lock()
	if drop {
		s.drops[n] = true
	} else {
		delete(s.drops, n)
	}
	s.mu.Unlock()
}

// SetDown drops every query, like an upstream outage.
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// SetTruncateUDP makes every UDP answer come back empty with TC=1; TCP
// answers stay complete.
func (s *Server) SetTruncateUDP(on bool) {
	s.mu.Lock()
	s.truncUDP = on
	s.mu.Unlock()
}

// Queries is the number of queries received, answered or not.
func (s *Server) Queries() int { return int(s.queries.Load()) }

// QueriesFor is the number of queries received for one name (any type).
func (s *Server) QueriesFor(name string) int {
	if v, ok := s.perName.Load(canon(name)); ok {
		return int(v.(*atomic.Int64).Load())
	}
	return 0
}

func canon(name string) string { return dns.CanonicalName(name) }

func (s *Server) handler(tcp bool) dns.HandlerFunc {
	return func(w dns.ResponseWriter, req *dns.Msg) {
		s.queries.Add(1)
		if len(req.Question) != 1 {
			m := new(dns.Msg)
			m.SetRcode(req, dns.RcodeFormatError)
			w.WriteMsg(m) //nolint:errcheck
			return
		}
		q := req.Question[0]
		name := canon(q.Name)
		v, _ := s.perName.LoadOrStore(name, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)

		s.mu.RLock()
		down, drop := s.down, s.drops[name]
		rcode, forced := s.rcodes[name]
		trunc := s.truncUDP && !tcp
		z := s.zone
		s.mu.RUnlock()
		if down || drop {
			return
		}
		m := new(dns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = false
		switch {
		case forced:
			m.Rcode = rcode
		case trunc:
			m.Truncated = true
		default:
			z.answer(m, q)
		}
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), false)
			size = int(opt.UDPSize())
		}
		if !tcp {
			m.Truncate(size)
		}
		w.WriteMsg(m) //nolint:errcheck
	}
}

func parseZone(text string) (*zoneData, error) {
	z := &zoneData{names: map[string][]dns.RR{}, soa: map[string]*dns.SOA{}}
	zp := dns.NewZoneParser(strings.NewReader(text), ".", "dnstest")
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		h := rr.Header()
		h.Name = canon(h.Name)
		z.names[h.Name] = append(z.names[h.Name], rr)
		if soa, ok := rr.(*dns.SOA); ok {
			z.soa[h.Name] = soa
		}
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("parse zone: %v", err)
	}
	return z, nil
}

// apexOf is the closest enclosing zone apex of name, or "".
func (z *zoneData) apexOf(name string) string {
	for n := name; ; {
		if _, ok := z.soa[n]; ok {
			return n
		}
		if n == "." {
			return ""
		}
		i, end := dns.NextLabel(n, 0)
		if end {
			n = "."
		} else {
			n = n[i:]
		}
	}
}

// delegation returns the owner of the highest NS set strictly below apex
// that encloses name, if any: that is where the zone's authority ends.
func (z *zoneData) delegation(name, apex string) string {
	labels := dns.SplitDomainName(name)
	apexLabels := dns.CountLabel(apex)
	for i := len(labels) - apexLabels - 1; i >= 0; i-- {
		cut := dns.Fqdn(strings.Join(labels[i:], "."))
		if _, isApex := z.soa[cut]; isApex {
			return ""
		}
		for _, rr := range z.names[cut] {
			if rr.Header().Rrtype == dns.TypeNS {
				return cut
			}
		}
	}
	return ""
}

// exists reports whether name owns records or is an empty non-terminal.
func (z *zoneData) exists(name string) bool {
	if len(z.names[name]) > 0 {
		return true
	}
	suffix := "." + name
	if name == "." {
		suffix = "."
	}
	for n := range z.names {
		if strings.HasSuffix(n, suffix) {
			return true
		}
	}
	return false
}

func (z *zoneData) answer(m *dns.Msg, q dns.Question) {
	name := canon(q.Name)
	for hops := 0; hops < 8; hops++ {
		apex := z.apexOf(name)
		if apex == "" {
			if hops == 0 {
				m.Rcode = dns.RcodeRefused
			}
			return
		}
		if cut := z.delegation(name, apex); cut != "" && !(cut == name && q.Qtype == dns.TypeDS) {
			if hops > 0 {
				return // the resolver follows the chain from here
			}
			m.Authoritative = false
			for _, rr := range z.names[cut] {
				if rr.Header().Rrtype != dns.TypeNS {
					continue
				}
				m.Ns = append(m.Ns, dns.Copy(rr))
				target := canon(rr.(*dns.NS).Ns)
				for _, g := range z.names[target] {
					if t := g.Header().Rrtype; t == dns.TypeA || t == dns.TypeAAAA {
						m.Extra = append(m.Extra, dns.Copy(g))
					}
				}
			}
			return
		}
		m.Authoritative = true
		var cname *dns.CNAME
		found := false
		for _, rr := range z.names[name] {
			t := rr.Header().Rrtype
			if t == q.Qtype || q.Qtype == dns.TypeANY {
				m.Answer = append(m.Answer, dns.Copy(rr))
				found = true
			}
			if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if found {
			return
		}
		if cname != nil && q.Qtype != dns.TypeCNAME {
			m.Answer = append(m.Answer, dns.Copy(cname))
			name = canon(cname.Target)
			continue
		}
		if !z.exists(name) {
			m.Rcode = dns.RcodeNameError
		}
		m.Ns = append(m.Ns, dns.Copy(z.soa[apex]))
		return
	}
}
