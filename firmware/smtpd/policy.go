package smtpd

import (
	"errors"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Address is a parsed envelope address: the local part as the client sent
// it (already unquoted by the SMTP parser) and the domain in canonical form
// (lower case, no trailing dot).
type Address struct {
	Local  string
	Domain string
}

func (a Address) String() string { return a.Local + "@" + a.Domain }

var (
	errNoAt       = errors.New("address has no domain")
	errBadDomain  = errors.New("invalid domain")
	errEmptyLocal = errors.New("empty local part")
	errTooLong    = errors.New("address too long")
)

// ParseAddress splits an envelope address at its last '@' and checks the
// domain's syntax. go-smtp has already removed angle brackets, a source route
// (RFC 5321 §4.1.1.3 says to ignore it) and the quotes of a quoted local part,
// so `"user@other"@host` arrives here as `user@other@host`: splitting at the
// last '@' leaves the embedded '@' in the local part, where the relay check
// sees it.
func ParseAddress(s string) (Address, error) {
	if len(s) > 512 {
		return Address{}, errTooLong
	}
	i := strings.LastIndexByte(s, '@')
	if i < 0 {
		return Address{}, errNoAt
	}
	local, domain := s[:i], s[i+1:]
	if local == "" {
		return Address{}, errEmptyLocal
	}
	d, err := canonicalDomain(domain)
	if err != nil {
		return Address{}, err
	}
	return Address{Local: local, Domain: d}, nil
}

// canonicalDomain lower-cases a domain and drops one trailing dot, so
// "Example.COM." and "example.com" compare equal; anything that is not a
// well-formed host name or address literal is an error rather than a guess.
func canonicalDomain(d string) (string, error) {
	if strings.HasPrefix(d, "[") {
		if !strings.HasSuffix(d, "]") {
			return "", errBadDomain
		}
		lit := d[1 : len(d)-1]
		if v6, ok := strings.CutPrefix(lit, "IPv6:"); ok {
			a, err := netip.ParseAddr(v6)
			if err != nil || !a.Is6() {
				return "", errBadDomain
			}
			return "[IPv6:" + a.String() + "]", nil
		}
		a, err := netip.ParseAddr(lit)
		if err != nil || !a.Is4() {
			return "", errBadDomain
		}
		return "[" + a.String() + "]", nil
	}
	d = strings.TrimSuffix(d, ".")
	if d == "" || len(d) > 253 || !utf8.ValidString(d) {
		return "", errBadDomain
	}
	d = strings.ToLower(d)
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", errBadDomain
		}
		for _, r := range label {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			case r >= 0x80: // internationalised (SMTPUTF8) labels
			default:
				return "", errBadDomain
			}
		}
	}
	return d, nil
}

// routingChars are local-part characters that some MTAs still interpret as
// "forward to another host": user%other@us (percent hack), other!user@us (bang
// path) and a literal '@' from a quoted local part. Mail to an accepted domain
// whose local part carries them could leave through us to a third party.
const routingChars = "%!@"

// RelayVerdict is the outcome of the relay check for one recipient.
type RelayVerdict int

const (
	// RelayAccept: the recipient may be queued.
	RelayAccept RelayVerdict = iota
	// RelayDenied: not our domain and the client may not relay (554 5.7.1).
	RelayDenied
	// RelayRouting: our domain, but the local part tries to route elsewhere (554 5.7.1).
	RelayRouting
)

// Policy decides, at RCPT time, whether a recipient may be accepted.
type Policy struct {
	Accepted map[string]bool
}

// NewPolicy builds a policy from canonical accepted domains.
func NewPolicy(domains []string) *Policy {
	p := &Policy{Accepted: map[string]bool{}}
	for _, d := range domains {
		if c, err := canonicalDomain(d); err == nil {
			p.Accepted[c] = true
		}
	}
	return p
}

// Decide applies the relay rules: trusted clients (relay_networks or
// authenticated) may send anywhere; anyone else only to an accepted domain,
// and never with a local part that names another destination.
func (p *Policy) Decide(a Address, trusted bool) RelayVerdict {
	if trusted {
		return RelayAccept
	}
	if !p.Accepted[a.Domain] {
		return RelayDenied
	}
	if strings.ContainsAny(a.Local, routingChars) {
		return RelayRouting
	}
	return RelayAccept
}
