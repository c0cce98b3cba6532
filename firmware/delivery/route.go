package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/mxbox/mxbox/firmware/config"
)

// TLS policies toward a next hop.
const (
	tlsNone          = "none"
	tlsOpportunistic = "opportunistic"
	tlsRequired      = "required"
)

// route is where mail for some domains goes and how.
type route struct {
	name string
	// hosts are the configured upstreams; nil means "look up MX".
	hosts []config.Host
	// configured marks routes to hosts the operator named: every failure
	// toward them is an outage (retry), never the recipient's fault.
	configured bool
	tlsPolicy  string
	roots      *x509.CertPool // nil: system roots
	authUser   string
	authPass   string
}

// router maps a recipient domain to a route and a next-hop name.
type router struct {
	exact    map[string]*route
	suffix   []suffixRoute // ".example.com" patterns, longest first
	def      *route        // smarthosts, or MX for everything
	fallback []config.Host
	hostname string
	maxHosts int
	maxAddrs int
	resolver Resolver
	// mxPort is 25; tests point it at their sinks' port.
	mxPort int
}

type suffixRoute struct {
	suffix string
	r      *route
}

func loadRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read tls_ca_file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls_ca_file %s: no PEM certificates", file)
	}
	return pool, nil
}

func newRouter(cfg *config.Config, res Resolver) (*router, error) {
	d := &cfg.Delivery
	rt := &router{
		exact:    map[string]*route{},
		fallback: d.ParsedFallback(),
		hostname: strings.ToLower(strings.TrimSuffix(cfg.Hostname, ".")),
		maxHosts: d.MaxHosts,
		maxAddrs: d.MaxAddresses,
		resolver: res,
		mxPort:   25,
	}
	roots, err := loadRoots(d.TLSCAFile)
	if err != nil {
		return nil, err
	}
	if d.Mode == "smarthost" {
		rt.def = &route{name: "smarthost", hosts: d.ParsedSmarthosts(), configured: true,
			tlsPolicy: d.TLS, roots: roots, authUser: d.AuthUser, authPass: d.AuthPassword}
	} else {
		rt.def = &route{name: "mx", tlsPolicy: d.TLS, roots: roots}
	}
	for i := range d.Routes {
		cr := &d.Routes[i]
		roots, err := loadRoots(cr.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", cr.Name, err)
		}
		r := &route{name: cr.Name, hosts: cr.ParsedHosts(), configured: len(cr.ParsedHosts()) > 0,
			tlsPolicy: cr.TLS, roots: roots, authUser: cr.AuthUser, authPass: cr.AuthPassword}
		doms := slices.Clone(cr.Domains)
		if cr.AcceptedDomains {
			doms = append(doms, cfg.SMTP.AcceptedDomains...)
		}
		for _, dom := range doms {
			if strings.HasPrefix(dom, ".") {
				rt.suffix = append(rt.suffix, suffixRoute{dom, r})
			} else if _, dup := rt.exact[dom]; !dup {
				// First route naming a domain wins, like a routing table read top-down.
				rt.exact[dom] = r
			}
		}
	}
	slices.SortStableFunc(rt.suffix, func(a, b suffixRoute) int { return len(b.suffix) - len(a.suffix) })
	return rt, nil
}

// domainOf returns the lower-case domain of an address ("" for none).
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.TrimSuffix(strings.ToLower(addr[i+1:]), ".")
}

// lookup returns the route for a recipient domain and its next-hop name:
// the route's name when it has hosts, else the domain itself (one hop per
// MX-looked-up domain).
func (rt *router) lookup(domain string) (*route, string) {
	r := rt.exact[domain]
	if r == nil {
		for _, s := range rt.suffix {
			if strings.HasSuffix(domain, s.suffix) {
				r = s.r
				break
			}
		}
	}
	if r == nil {
		r = rt.def
	}
	if r.hosts != nil {
		return r, r.name
	}
	return r, domain
}

// target is one host to try, with the name TLS verifies against.
type target struct {
	name     string // host name (or IP literal) for TLS and Remote-MTA
	port     int
	fallback bool
}

// shuffleEqual sorts by preference and shuffles runs of equal preference
// (RFC 5321 §5.1), so load spreads over equal hosts.
func shuffleEqual[T any](items []T, pref func(T) int) {
	slices.SortStableFunc(items, func(a, b T) int { return pref(a) - pref(b) })
	for i := 0; i < len(items); {
		j := i + 1
		for j < len(items) && pref(items[j]) == pref(items[i]) {
			j++
		}
		run := items[i:j]
		rand.Shuffle(len(run), func(a, b int) { run[a], run[b] = run[b], run[a] })
		i = j
	}
}

// targets returns the hosts to try for domain in order, capped at
// max_hosts, then the fallback relays. A non-nil error is the routing
// result for the whole domain (null MX, NXDOMAIN, DNS failure).
func (rt *router) targets(ctx context.Context, r *route, domain string) ([]target, *result) {
	var out []target
	if r.hosts != nil {
		hosts := slices.Clone(r.hosts)
		shuffleEqual(hosts, func(h config.Host) int { return h.Pref })
		for _, h := range hosts {
			out = append(out, target{name: h.Name, port: h.Port})
		}
	} else {
		mxs, err := rt.resolver.LookupMX(ctx, domain)
		switch {
		case err == nil && len(mxs) > 0:
		case err == nil, classifyDNS(err) == dnsNoData:
			// RFC 5321 §5.1: no MX records, the domain itself is the host.
			mxs = []*net.MX{{Host: domain, Pref: 0}}
		case classifyDNS(err) == dnsNotFound:
			return nil, permanent("5.1.2", fmt.Sprintf("domain %s not found (NXDOMAIN)", domain))
		default:
			return nil, temporary("4.4.3", fmt.Sprintf("MX lookup for %s: %v", domain, err))
		}
		if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
			return nil, permanent("5.1.10", fmt.Sprintf("domain %s accepts no mail (null MX, RFC 7505)", domain))
		}
		mxs = slices.Clone(mxs)
		shuffleEqual(mxs, func(m *net.MX) int { return int(m.Pref) })
		// Backup MX: when we are one of the hosts, only better ones may be
		// tried, or mail would loop back to us.
		for i, m := range mxs {
			if strings.EqualFold(strings.TrimSuffix(m.Host, "."), rt.hostname) {
				ours := m.Pref
				j := 0
				for j < i && mxs[j].Pref < ours {
					j++
				}
				mxs = mxs[:j]
				if len(mxs) == 0 && len(rt.fallback) == 0 {
					// A configuration problem here, not the sender's: retry.
					return nil, temporary("4.4.6", fmt.Sprintf("mail for %s loops back to myself (best MX is %s)", domain, rt.hostname))
				}
				break
			}
		}
		for _, m := range mxs {
			out = append(out, target{name: strings.ToLower(strings.TrimSuffix(m.Host, ".")), port: rt.mxPort})
		}
	}
	if len(out) > rt.maxHosts {
		out = out[:rt.maxHosts]
	}
	fb := slices.Clone(rt.fallback)
	shuffleEqual(fb, func(h config.Host) int { return h.Pref })
	for _, h := range fb {
		out = append(out, target{name: h.Name, port: h.Port, fallback: true})
	}
	return out, nil
}

// addresses resolves one target: an IP literal is itself, a name is every
// A/AAAA address in random order (one name with ten addresses is ten chances).
func (rt *router) addresses(ctx context.Context, t target) ([]netip.AddrPort, error) {
	if a, err := netip.ParseAddr(t.name); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(a.Unmap(), uint16(t.port))}, nil
	}
	addrs, err := rt.resolver.LookupHost(ctx, t.name)
	if err != nil {
		return nil, err
	}
	out := make([]netip.AddrPort, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(t.port)))
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out, nil
}

// tlsConfig builds the client TLS config for one host under r's policy.
func (r *route) tlsConfig(serverName string) *tls.Config {
	c := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if r.tlsPolicy == tlsRequired {
		c.RootCAs = r.roots
	} else {
		// Opportunistic TLS (RFC 7435): encryption against passive
		// listeners; an unverifiable certificate is still better than
		// plaintext, which is the alternative.
		c.InsecureSkipVerify = true //nolint:gosec // policy "opportunistic"
	}
	return c
}
