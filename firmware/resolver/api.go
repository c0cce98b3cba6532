package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ErrNotFound means the name does not exist (NXDOMAIN): a permanent failure.
var ErrNotFound = errors.New("no such domain")

// ErrNoData means the name exists but has no records of the asked type
// (NODATA): for MX, RFC 5321 §5.1 says to use the domain's address instead.
var ErrNoData = errors.New("no records of that type")

// TempError is a temporary failure: SERVFAIL, timeout, every upstream down
// and nothing cached. Mail to the name should be retried later.
type TempError struct {
	Name   string
	Reason string
}

func (e *TempError) Error() string {
	return fmt.Sprintf("lookup %s: temporary failure: %s", e.Name, e.Reason)
}

// Temporary reports true: callers check it with errors.As or an interface.
func (e *TempError) Temporary() bool { return true }

// Timeout reports true too, so net.Error-style checks treat it as retryable.
func (e *TempError) Timeout() bool { return true }

// records resolves name/qtype in-process through the same cache, stale
// rules and upstreams as the socket path, and returns the answer records.
func (r *Resolver) records(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	if _, ok := dns.IsDomainName(name); !ok || name == "" {
		return nil, fmt.Errorf("lookup %s: invalid name: %w", name, ErrNotFound)
	}
	if _, has := ctx.Deadline(); !has {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.timeout)
		defer cancel()
	}
	fqdn := dns.Fqdn(name)
	e, _, err := r.resolve(ctx, fqdn, qtype, false)
	if err != nil {
		return nil, err
	}
	typ := dns.TypeToString[qtype]
	switch e.kind {
	case kindNXDomain:
		return nil, fmt.Errorf("lookup %s %s: %w", name, typ, ErrNotFound)
	case kindNoData:
		return nil, fmt.Errorf("lookup %s %s: %w", name, typ, ErrNoData)
	case kindServFail:
		return nil, &TempError{Name: name, Reason: "upstream SERVFAIL (cached)"}
	}
	m := new(dns.Msg)
	if err := m.Unpack(e.msg); err != nil {
		return nil, &TempError{Name: name, Reason: "corrupt cache entry"}
	}
	var out []dns.RR
	for _, rr := range m.Answer {
		if rr.Header().Rrtype == qtype {
			out = append(out, rr)
		}
	}
	if len(out) == 0 { // a CNAME chain that ends nowhere
		return nil, fmt.Errorf("lookup %s %s: %w", name, typ, ErrNoData)
	}
	return out, nil
}

// LookupMX returns domain's MX records sorted by preference (ties keep
// answer order). A null MX (RFC 7505, "0 .") comes back as one record with
// Host "." so the caller can bounce at once. Host names are FQDNs with the
// trailing dot.
func (r *Resolver) LookupMX(ctx context.Context, domain string) ([]*net.MX, error) {
	rrs, err := r.records(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	out := make([]*net.MX, 0, len(rrs))
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		out = append(out, &net.MX{Host: strings.ToLower(mx.Mx), Pref: mx.Preference})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Pref < out[j].Pref })
	return out, nil
}

// LookupHost returns host's IPv4 and IPv6 addresses (A first). Any address
// is success; otherwise NXDOMAIN on both → ErrNotFound, no temporary error
// → ErrNoData, else the TempError. An IP literal is returned as is.
func (r *Resolver) LookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	type res struct {
		rrs []dns.RR
		err error
	}
	ch := make(chan res, 1)
	go func() {
		rrs, err := r.records(ctx, host, dns.TypeAAAA)
		ch <- res{rrs, err}
	}()
	v4, err4 := r.records(ctx, host, dns.TypeA)
	v6 := <-ch
	var out []netip.Addr
	for _, rr := range append(v4, v6.rrs...) {
		switch a := rr.(type) {
		case *dns.A:
			if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
				out = append(out, ip)
			}
		case *dns.AAAA:
			if ip, ok := netip.AddrFromSlice(a.AAAA); ok {
				out = append(out, ip)
			}
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	var te *TempError
	switch {
	case errors.As(err4, &te):
		return nil, err4
	case errors.As(v6.err, &te):
		return nil, v6.err
	case errors.Is(err4, ErrNotFound) && errors.Is(v6.err, ErrNotFound):
		return nil, err4
	case errors.Is(err4, ErrNotFound) || errors.Is(v6.err, ErrNotFound):
		// one family says the name is gone, the other NODATA: trust NXDOMAIN
		return nil, fmt.Errorf("lookup %s: %w", host, ErrNotFound)
	}
	return nil, fmt.Errorf("lookup %s: %w", host, ErrNoData)
}

// ForwarderStats is one upstream's health for the status page.
type ForwarderStats struct {
	Addr      string
	SRTT      time.Duration
	Queries   uint64
	Failures  uint64
	Down      bool      // in backoff
	DownUntil time.Time // next re-probe
}

// Stats is a point-in-time snapshot of counters for the web UI and metrics.
type Stats struct {
	Queries      uint64 // packets parsed from clients
	CacheHits    uint64 // fresh answers from cache or static records (socket and API)
	CacheMisses  uint64 // went to the stale rules / upstream
	StaleAnswers uint64 // RFC 8767 answers
	Prefetches   uint64
	Refused      uint64 // clients outside the ACL
	RateLimited  uint64 // dropped or TC'd by the per-client limit
	Dropped      uint64 // malformed packets and overload
	ServFails    uint64 // SERVFAIL sent to clients
	Recursions   uint64 // upstream fetches that fell back to recursion
	Entries      int
	Bytes        int64
	Pinned       int
	Forwarders   []ForwarderStats
}

// Stats returns the current counters.
func (r *Resolver) Stats() Stats {
	s := Stats{
		Queries:      r.stats.queries.Load(),
		CacheHits:    r.stats.hits.Load(),
		CacheMisses:  r.stats.misses.Load(),
		StaleAnswers: r.stats.stale.Load(),
		Prefetches:   r.stats.prefetches.Load(),
		Refused:      r.stats.refused.Load(),
		RateLimited:  r.stats.rateLimited.Load(),
		Dropped:      r.stats.dropped.Load(),
		ServFails:    r.stats.servfails.Load(),
		Recursions:   r.stats.recursions.Load(),
		Pinned:       len(*r.pins.Load()),
	}
	s.Entries, s.Bytes = r.cache.usage()
	now := r.now()
	for _, f := range r.fwd {
		f.mu.Lock()
		s.Forwarders = append(s.Forwarders, ForwarderStats{Addr: f.addr, SRTT: f.srtt, Queries: f.queries.Load(),
			Failures: f.failures.Load(), Down: now.Before(f.downUntil), DownUntil: f.downUntil})
		f.mu.Unlock()
	}
	return s
}
