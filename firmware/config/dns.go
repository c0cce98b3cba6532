package config

import (
	"net/netip"
	"strconv"
	"strings"
)

// DNS configures the caching resolver (package resolver).
type DNS struct {
	Listen     string   `toml:"listen"`
	Allow      []string `toml:"allow"`
	Forwarders []string `toml:"forwarders"`
	Recursion  bool     `toml:"recursion"`
	ServeStale bool     `toml:"serve_stale"`
	MaxStale   Duration `toml:"max_stale"`
	CacheBytes Size     `toml:"cache_bytes"`

	// AllowLoopback admits 127.0.0.0/8 and ::1 without listing them; off
	// only for tests and for boxes that must not answer their own host.
	AllowLoopback bool `toml:"allow_loopback"`
	// RateLimit is queries per second per client address over UDP (0 = off);
	// RateBurst is the bucket size.
	RateLimit int `toml:"rate_limit"`
	RateBurst int `toml:"rate_burst"`
	// MinTTL/MaxTTL clamp positive answers; MaxNegativeTTL caps RFC 2308
	// negative caching.
	MinTTL         Duration `toml:"min_ttl"`
	MaxTTL         Duration `toml:"max_ttl"`
	MaxNegativeTTL Duration `toml:"max_negative_ttl"`
	// QueryTimeout is the hard deadline of one client query: after it the
	// client gets stale data or SERVFAIL.
	QueryTimeout Duration `toml:"query_timeout"`
	// Workers bounds the goroutines resolving cache misses.
	Workers int `toml:"workers"`
	// SnapshotInterval is how often the cache is written to flash (only when
	// it changed); it is also written on clean shutdown.
	SnapshotInterval Duration `toml:"snapshot_interval"`
	// Records are static answers that override DNS.
	Records []DNSRecord `toml:"records"`
}

// DNSRecord is one static record, e.g. {name="smtp.isp.example", type="A",
// value="192.0.2.10"} or {name="isp.example", type="MX", value="10 smtp.isp.example"}.
type DNSRecord struct {
	Name  string `toml:"name"`
	Type  string `toml:"type"`
	Value string `toml:"value"`
}

func (d *DNS) validate(c *checker) {
	c.addr("dns.listen", d.Listen, true)
	c.prefixes("dns.allow", d.Allow)
	for _, f := range d.Forwarders {
		c.addr("dns.forwarders", f, false)
	}
	if d.CacheBytes < 64<<10 {
		c.add("dns.cache_bytes", "must be at least 64KiB")
	}
	if d.MaxStale < 0 {
		c.add("dns.max_stale", "must not be negative")
	}
	if d.RateLimit < 0 || d.RateBurst < 0 {
		c.add("dns.rate_limit", "rate_limit and rate_burst must not be negative")
	}
	if d.RateLimit > 0 && d.RateBurst < 1 {
		c.add("dns.rate_burst", "must be at least 1 when rate_limit is on")
	}
	if d.MinTTL < 0 || d.MaxTTL <= 0 || d.MinTTL > d.MaxTTL {
		c.add("dns.max_ttl", "need 0 <= min_ttl <= max_ttl and max_ttl > 0")
	}
	if d.MaxNegativeTTL < 0 {
		c.add("dns.max_negative_ttl", "must not be negative")
	}
	if d.QueryTimeout.D() < 500e6 || d.QueryTimeout.D() > 30e9 {
		c.add("dns.query_timeout", "must be between 500ms and 30s")
	}
	if d.Workers < 1 || d.Workers > 4096 {
		c.add("dns.workers", "must be between 1 and 4096")
	}
	if d.SnapshotInterval.D() < 60e9 {
		c.add("dns.snapshot_interval", "must be at least 1m (flash wear)")
	}
	for _, r := range d.Records {
		checkDNSRecord(c, r)
	}
}

// checkDNSRecord does the syntax checks possible without a DNS library (only
// package resolver may import one); the resolver parses the record fully.
func checkDNSRecord(c *checker, r DNSRecord) {
	const key = "dns.records"
	name := strings.TrimSuffix(r.Name, ".")
	c.domain(key, name)
	switch strings.ToUpper(r.Type) {
	case "A":
		if a, err := netip.ParseAddr(r.Value); err != nil || !a.Is4() {
			c.add(key, "%s A: invalid IPv4 address %q", r.Name, r.Value)
		}
	case "AAAA":
		if a, err := netip.ParseAddr(r.Value); err != nil || !a.Is6() || a.Is4In6() {
			c.add(key, "%s AAAA: invalid IPv6 address %q", r.Name, r.Value)
		}
	case "MX":
		f := strings.Fields(r.Value)
		if len(f) != 2 {
			c.add(key, "%s MX: want \"preference host\", not %q", r.Name, r.Value)
			return
		}
		if p, err := strconv.Atoi(f[0]); err != nil || p < 0 || p > 65535 {
			c.add(key, "%s MX: invalid preference %q", r.Name, f[0])
		}
		if f[1] != "." {
			c.domain(key, strings.TrimSuffix(f[1], "."))
		}
	case "CNAME", "PTR":
		c.domain(key, strings.TrimSuffix(r.Value, "."))
	case "TXT":
		if r.Value == "" {
			c.add(key, "%s TXT: empty value", r.Name)
		}
	default:
		c.add(key, "%s: type must be A, AAAA, MX, CNAME, PTR or TXT, not %q", r.Name, r.Type)
	}
}
