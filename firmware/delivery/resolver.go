package delivery

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/mxbox/mxbox/firmware/resolver"
)

// Resolver is what delivery needs from DNS. The daemon passes the in-process
// caching resolver; tests pass one pointed at a loopback test server.
type Resolver interface {
	// LookupMX returns the MX records of domain. A null MX (RFC 7505) is a
	// single record with Host ".".
	LookupMX(ctx context.Context, domain string) ([]*net.MX, error)
	// LookupHost returns the A and AAAA addresses of host.
	LookupHost(ctx context.Context, host string) ([]netip.Addr, error)
}

// dnsNotFoundErrs and dnsNoDataErrs are the sentinels a Resolver wraps with
// %w for NXDOMAIN and for "name exists, no records of that type"; tests add
// their fake resolver's.
var (
	dnsNotFoundErrs = []error{resolver.ErrNotFound}
	dnsNoDataErrs   = []error{resolver.ErrNoData}
)

// dnsClass sorts a lookup error: the name does not exist, it has no records
// of the type, or the lookup failed for now (SERVFAIL, timeout, no
// forwarder) and must be retried.
type dnsClass int

const (
	dnsTemporary dnsClass = iota
	dnsNotFound
	dnsNoData
)

func classifyDNS(err error) dnsClass {
	for _, s := range dnsNotFoundErrs {
		if errors.Is(err, s) {
			return dnsNotFound
		}
	}
	for _, s := range dnsNoDataErrs {
		if errors.Is(err, s) {
			return dnsNoData
		}
	}
	var de *net.DNSError
	if errors.As(err, &de) && de.IsNotFound && !de.IsTemporary && !de.IsTimeout {
		// The standard library does not tell NXDOMAIN from NODATA; treating
		// it as NODATA keeps implicit MX working and never bounces wrongly.
		return dnsNoData
	}
	return dnsTemporary
}

// noResolver fails every lookup: a box without DNS can still deliver to
// smarthosts given as IP addresses.
type noResolver struct{}

var errNoResolver = errors.New("no DNS resolver configured")

func (noResolver) LookupMX(context.Context, string) ([]*net.MX, error) { return nil, errNoResolver }
func (noResolver) LookupHost(context.Context, string) ([]netip.Addr, error) {
	return nil, errNoResolver
}
