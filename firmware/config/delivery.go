package config

import (
	"net"
	"strconv"
	"strings"
	"time"
)

// Delivery configures how queued mail leaves the box.
type Delivery struct {
	Mode             string   `toml:"mode"`
	Smarthosts       []string `toml:"smarthosts"`
	FallbackRelay    []string `toml:"fallback_relay"`
	RetryMin         Duration `toml:"retry_min"`
	RetryMax         Duration `toml:"retry_max"`
	MaxQueueLifetime Duration `toml:"max_queue_lifetime"`
	DelayWarning     Duration `toml:"delay_warning"`
	DrainRate        float64  `toml:"drain_rate"`
	Concurrency      int      `toml:"concurrency"`
	SoftBounce       bool     `toml:"soft_bounce"`

	// HopConcurrency caps simultaneous connections to one next hop.
	HopConcurrency int `toml:"hop_concurrency"`
	// ConnectTimeout bounds one TCP connect, so a dead address costs seconds.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// GreetingTimeout, CommandTimeout and DataTimeout are RFC 5321 §4.5.3.2's
	// 5 min / 5 min / 10 min, shortenable for appliances on a LAN.
	GreetingTimeout Duration `toml:"greeting_timeout"`
	CommandTimeout  Duration `toml:"command_timeout"`
	DataTimeout     Duration `toml:"data_timeout"`
	// MaxHosts and MaxAddresses cap how much one attempt tries.
	MaxHosts     int `toml:"max_hosts"`
	MaxAddresses int `toml:"max_addresses"`
	// DownAfter consecutive failed attempts mark a next hop down; while down
	// it is probed every ProbeInterval and its mail waits without attempts.
	DownAfter     int      `toml:"down_after"`
	ProbeInterval Duration `toml:"probe_interval"`
	// IdleTimeout is how long an idle upstream connection is kept for reuse.
	IdleTimeout Duration `toml:"idle_timeout"`
	// TLS policy and AUTH for the smarthosts and fallback relays (routes have
	// their own).
	TLS          string `toml:"tls"`
	TLSCAFile    string `toml:"tls_ca_file"`
	AuthUser     string `toml:"auth_user"`
	AuthPassword string `toml:"auth_password"`

	Routes []Route `toml:"routes"`

	smarthosts []Host
	fallback   []Host
}

// Route sends mail for some recipient domains to its own hosts.
type Route struct {
	// Name identifies the route's next hop in logs, stats and `queue flush`.
	Name string `toml:"name"`
	// Domains are matched exactly; ".example.com" matches every subdomain.
	Domains []string `toml:"domains"`
	// AcceptedDomains adds smtp.accepted_domains to Domains.
	AcceptedDomains bool `toml:"accepted_domains"`
	// Hosts are "[pref ]host[:port]"; empty means look up MX for the domain.
	Hosts        []string `toml:"hosts"`
	TLS          string   `toml:"tls"`
	TLSCAFile    string   `toml:"tls_ca_file"`
	AuthUser     string   `toml:"auth_user"`
	AuthPassword string   `toml:"auth_password"`

	hosts []Host
}

// Host is one parsed upstream: lower Pref is tried first.
type Host struct {
	Name string // DNS name or IP literal, without brackets
	Port int
	Pref int
}

// Addr is "name:port".
func (h Host) Addr() string { return net.JoinHostPort(h.Name, strconv.Itoa(h.Port)) }

// ParsedSmarthosts returns the validated smarthosts.
func (d *Delivery) ParsedSmarthosts() []Host { return d.smarthosts }

// ParsedFallback returns the validated fallback_relay hosts.
func (d *Delivery) ParsedFallback() []Host { return d.fallback }

// ParsedHosts returns the route's validated hosts (nil: MX lookup).
func (r *Route) ParsedHosts() []Host { return r.hosts }

// ParseHost parses "[pref ]host[:port]" ("10 relay.isp.net:587",
// "[2001:db8::1]:25", "relay"). Without a preference the list position is
// used, so a plain list is tried in order.
func ParseHost(s string, position int) (Host, error) {
	h := Host{Pref: position, Port: 25}
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, ' '); i > 0 {
		p, err := strconv.Atoi(s[:i])
		if err != nil || p < 0 || p > 65535 {
			return h, errBadHost(s)
		}
		h.Pref = p
		s = strings.TrimSpace(s[i+1:])
	}
	if s == "" {
		return h, errBadHost(s)
	}
	host := s
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		hh, port, err := net.SplitHostPort(s)
		if err != nil {
			// "[::1]" without a port.
			if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
				hh, port = s[1:len(s)-1], ""
			} else {
				return h, errBadHost(s)
			}
		}
		host = hh
		if port != "" {
			p, err := parsePort(port)
			if err != nil || p == 0 {
				return h, errBadHost(s)
			}
			h.Port = p
		}
	}
	if host == "" || strings.ContainsAny(host, " /@[]") {
		return h, errBadHost(s)
	}
	h.Name = strings.TrimSuffix(strings.ToLower(host), ".")
	return h, nil
}

type errBadHost string

func (e errBadHost) Error() string {
	return "invalid host " + strconv.Quote(string(e)) + `: want "[pref ]host[:port]"`
}

func (c *checker) hosts(key string, vs []string) []Host {
	var out []Host
	for i, v := range vs {
		h, err := ParseHost(v, i)
		if err != nil {
			c.add(key, "%v", err)
			continue
		}
		out = append(out, h)
	}
	return out
}

func (c *checker) tlsPolicy(key, v string) {
	switch v {
	case "none", "opportunistic", "required":
	default:
		c.add(key, "must be \"none\", \"opportunistic\" or \"required\", not %q", v)
	}
}

func (d *Delivery) validate(c *checker) {
	d.smarthosts = c.hosts("delivery.smarthosts", d.Smarthosts)
	d.fallback = c.hosts("delivery.fallback_relay", d.FallbackRelay)
	switch d.Mode {
	case "smarthost":
		if len(d.Smarthosts) == 0 {
			c.add("delivery.smarthosts", "smarthost mode needs at least one smarthost")
		}
	case "mx":
	default:
		c.add("delivery.mode", "must be \"smarthost\" or \"mx\", not %q", d.Mode)
	}
	if d.RetryMin <= 0 || d.RetryMax < d.RetryMin {
		c.add("delivery.retry_max", "need 0 < retry_min <= retry_max")
	}
	if d.MaxQueueLifetime <= 0 {
		c.add("delivery.max_queue_lifetime", "must be a positive duration")
	}
	if d.DelayWarning < 0 {
		c.add("delivery.delay_warning", "must not be negative (0 turns it off)")
	}
	if d.DrainRate < 0 {
		c.add("delivery.drain_rate", "must not be negative (0 = unlimited)")
	}
	c.atLeast("delivery.concurrency", d.Concurrency, 1)
	if (d.AuthUser == "") != (d.AuthPassword == "") {
		c.add("delivery.auth_user", "auth_user and auth_password go together")
	}
	c.atLeast("delivery.hop_concurrency", d.HopConcurrency, 1)
	for _, t := range []struct {
		key string
		v   Duration
		min time.Duration
	}{
		{"delivery.connect_timeout", d.ConnectTimeout, 100 * time.Millisecond},
		{"delivery.greeting_timeout", d.GreetingTimeout, 100 * time.Millisecond},
		{"delivery.command_timeout", d.CommandTimeout, 100 * time.Millisecond},
		{"delivery.data_timeout", d.DataTimeout, 100 * time.Millisecond},
		{"delivery.probe_interval", d.ProbeInterval, 10 * time.Millisecond},
		{"delivery.idle_timeout", d.IdleTimeout, 0},
	} {
		if t.v.D() < t.min || (t.min == 0 && t.v < 0) {
			c.add(t.key, "must be at least %v", t.min)
		}
	}
	c.atLeast("delivery.max_hosts", d.MaxHosts, 1)
	c.atLeast("delivery.max_addresses", d.MaxAddresses, 1)
	c.atLeast("delivery.down_after", d.DownAfter, 1)
	c.tlsPolicy("delivery.tls", d.TLS)
	names := map[string]bool{"smarthost": true}
	for i := range d.Routes {
		r := &d.Routes[i]
		if r.TLS == "" {
			r.TLS = "opportunistic"
		}
		c.tlsPolicy("delivery.routes.tls", r.TLS)
		r.hosts = c.hosts("delivery.routes.hosts", r.Hosts)
		for j, dom := range r.Domains {
			dom = strings.TrimSuffix(strings.ToLower(dom), ".")
			r.Domains[j] = dom
			c.domain("delivery.routes.domains", strings.TrimPrefix(dom, "."))
		}
		if len(r.Domains) == 0 && !r.AcceptedDomains {
			c.add("delivery.routes.domains", "route %d matches no domain", i+1)
		}
		if r.Name == "" {
			switch {
			case len(r.Domains) > 0:
				r.Name = "route:" + r.Domains[0]
			default:
				r.Name = "route:accepted_domains"
			}
		}
		if names[r.Name] {
			c.add("delivery.routes.name", "duplicate route name %q", r.Name)
		}
		names[r.Name] = true
	}
}
