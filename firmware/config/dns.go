package config

// DNS configures the caching resolver.
type DNS struct {
	Listen     string   `toml:"listen"`
	Allow      []string `toml:"allow"`
	Forwarders []string `toml:"forwarders"`
	Recursion  bool     `toml:"recursion"`
	ServeStale bool     `toml:"serve_stale"`
	MaxStale   Duration `toml:"max_stale"`
	CacheBytes Size     `toml:"cache_bytes"`
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
}
