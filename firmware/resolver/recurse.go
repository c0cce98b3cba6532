package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Recursion is the fallback when every forwarder fails: iterate from the
// root hints, following referrals downwards. Loops are impossible by
// construction (each referral must be strictly deeper than the last) and
// the work is bounded anyway: referral depth, CNAME hops, total queries and
// nested name-server lookups each have a cap.

const (
	maxReferrals   = 16
	maxCNAMEs      = 8
	maxRecQueries  = 48
	maxNSLookups   = 3 // nesting depth of glue-less NS address lookups
	recTryTimeout  = 700 * time.Millisecond
	serversPerStep = 4
)

// builtinRootHints are the IANA root servers' IPv4 addresses (production
// default only; tests always pass their own).
var builtinRootHints = []string{
	"198.41.0.4:53", "170.247.170.2:53", "192.33.4.12:53", "199.7.91.13:53",
	"192.203.230.10:53", "192.5.5.241:53", "192.112.36.4:53", "198.97.190.53:53",
	"192.36.148.17:53", "192.58.128.30:53", "193.0.14.129:53", "199.7.83.42:53",
	"202.12.27.33:53",
}

var errLame = errors.New("lame or unhelpful answer")

type recBudget struct{ queries int }

// recurse resolves name/qtype iteratively and returns a reply shaped like a
// forwarder's: the CNAME chain and final records in Answer, SOA in Ns for a
// negative answer.
func (r *Resolver) recurse(ctx context.Context, name string, qtype uint16, do bool) (*dns.Msg, error) {
	out := new(dns.Msg)
	out.SetQuestion(name, qtype)
	out.Response = true
	b := &recBudget{queries: maxRecQueries}
	cur := name
	seen := map[string]bool{}
	for range maxCNAMEs {
		if seen[cur] {
			return nil, fmt.Errorf("recursion for %s: CNAME loop at %s", name, cur)
		}
		seen[cur] = true
		resp, err := r.iterate(ctx, cur, qtype, do, b, 0)
		if err != nil {
			return nil, fmt.Errorf("recursion for %s: %w", name, err)
		}
		// Walk the chain inside this answer.
		next, answered := cur, false
		for hop := 0; hop < maxCNAMEs; hop++ {
			progressed := false
			for _, rr := range resp.Answer {
				h := rr.Header()
				if !strings.EqualFold(h.Name, next) {
					continue
				}
				if h.Rrtype == qtype {
					out.Answer = append(out.Answer, rr)
					answered = true
				} else if c, ok := rr.(*dns.CNAME); ok && qtype != dns.TypeCNAME {
					out.Answer = append(out.Answer, rr)
					next = dns.CanonicalName(c.Target)
					progressed = true
					break
				}
			}
			if answered || !progressed {
				break
			}
		}
		if answered {
			return out, nil
		}
		if next != cur {
			cur = next
			continue
		}
		out.Rcode = resp.Rcode
		for _, rr := range resp.Ns {
			if rr.Header().Rrtype == dns.TypeSOA {
				out.Ns = append(out.Ns, rr)
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("recursion for %s: too many CNAMEs", name)
}

// iterate walks referrals from the root for one name and returns the
// first non-referral answer (authoritative data, NXDOMAIN or NODATA).
func (r *Resolver) iterate(ctx context.Context, name string, qtype uint16, do bool, b *recBudget, depth int) (*dns.Msg, error) {
	servers := r.roots
	zone := "."
	for range maxReferrals {
		resp, err := r.askAny(ctx, servers, name, qtype, do, b)
		if err != nil {
			return nil, err
		}
		if resp.Rcode == dns.RcodeNameError || len(resp.Answer) > 0 {
			resp.Answer = inBailiwick(resp.Answer, zone)
			return resp, nil
		}
		child, nsNames := referral(resp, zone, name)
		if child == "" {
			if resp.Authoritative {
				return resp, nil // NODATA
			}
			return nil, fmt.Errorf("%s at zone %s: %w", name, zone, errLame)
		}
		// Glue is only believed when it lies inside the zone of the server
		// that sent it; anything else could be cache poisoning.
		var next []string
		for _, rr := range resp.Extra {
			owner := dns.CanonicalName(rr.Header().Name)
			if !nsNames[owner] || !dns.IsSubDomain(zone, owner) {
				continue
			}
			switch a := rr.(type) {
			case *dns.A:
				next = append(next, net.JoinHostPort(a.A.String(), r.port))
			case *dns.AAAA:
				next = append(next, net.JoinHostPort(a.AAAA.String(), r.port))
			}
		}
		if len(next) == 0 && depth < maxNSLookups {
			for ns := range nsNames {
				if len(next) >= 2 {
					break
				}
				m, err := r.iterate(ctx, ns, dns.TypeA, false, b, depth+1)
				if err != nil {
					continue
				}
				for _, rr := range m.Answer {
					if a, ok := rr.(*dns.A); ok {
						next = append(next, net.JoinHostPort(a.A.String(), r.port))
					}
				}
			}
		}
		if len(next) == 0 {
			return nil, fmt.Errorf("no usable address for the name servers of %s", child)
		}
		servers, zone = next, child
	}
	return nil, fmt.Errorf("%s: more than %d referrals", name, maxReferrals)
}

// referral extracts a delegation from resp: an NS set for a zone strictly
// below zone that contains name. Anything else is not a usable referral.
func referral(resp *dns.Msg, zone, name string) (string, map[string]bool) {
	child := ""
	ns := map[string]bool{}
	for _, rr := range resp.Ns {
		n, ok := rr.(*dns.NS)
		if !ok {
			continue
		}
		owner := dns.CanonicalName(n.Hdr.Name)
		if owner == zone || !dns.IsSubDomain(zone, owner) || !dns.IsSubDomain(owner, name) {
			continue
		}
		if child != "" && owner != child {
			continue
		}
		child = owner
		ns[dns.CanonicalName(n.Ns)] = true
	}
	return child, ns
}

func inBailiwick(rrs []dns.RR, zone string) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		if dns.IsSubDomain(zone, dns.CanonicalName(rr.Header().Name)) {
			out = append(out, rr)
		}
	}
	return out
}

// askAny tries up to serversPerStep of servers (non-recursive queries)
// until one gives a usable answer.
func (r *Resolver) askAny(ctx context.Context, servers []string, name string, qtype uint16, do bool, b *recBudget) (*dns.Msg, error) {
	var last error = errLame
	for i, s := range servers {
		if i >= serversPerStep || ctx.Err() != nil {
			break
		}
		if b.queries <= 0 {
			return nil, errors.New("query budget exhausted")
		}
		b.queries--
		m, _, err := exchange(ctx, s, name, qtype, do, false, recTryTimeout)
		if err != nil {
			last = fmt.Errorf("%s: %w", s, err)
			continue
		}
		return m, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, last
}
