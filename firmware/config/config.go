// Package config owns mxbox's configuration: the TOML schema, the embedded
// development defaults, strict decoding (an unknown key, a wrong type or a bad
// value is an error naming the file, the line and the key) and validation.
//
// Key names are a public interface: tests and device configs outside this
// repository use them, so they only ever gain siblings, never change.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// defaultTOML is the development configuration: loopback, unprivileged ports,
// nothing leaves the machine. `mxbox config default` prints it verbatim, so
// its comments are the reference documentation for every key.
//
//go:embed default.toml
var defaultTOML []byte

// DefaultText returns the commented default configuration.
func DefaultText() []byte { return append([]byte(nil), defaultTOML...) }

// Config is the whole mxbox configuration.
type Config struct {
	Hostname string `toml:"hostname"`
	DataDir  string `toml:"data_dir"`
	LogLevel string `toml:"log_level"`
	// MemoryLimit is the Go runtime's soft memory limit (debug.SetMemoryLimit):
	// the GC works harder as the heap nears it. 0 = no limit.
	MemoryLimit Size `toml:"memory_limit"`

	SMTP     SMTP     `toml:"smtp"`
	Delivery Delivery `toml:"delivery"`
	DNS      DNS      `toml:"dns"`
	Web      Web      `toml:"web"`

	// Source is the file the config came from ("<default>" for the embedded one).
	Source string `toml:"-"`
}

// SMTP configures the inbound listeners and their policy.
type SMTP struct {
	Listen           string   `toml:"listen"`
	SubmissionListen string   `toml:"submission_listen"`
	TLSListen        string   `toml:"tls_listen"`
	RelayNetworks    []string `toml:"relay_networks"`
	AcceptedDomains  []string `toml:"accepted_domains"`
	MaxMessageBytes  Size     `toml:"max_message_bytes"`
	DataMemory       Size     `toml:"data_memory"`
	MaxRecipients    int      `toml:"max_recipients"`
	MaxLineLength    int      `toml:"max_line_length"`
	MaxReceived      int      `toml:"max_received_headers"`
	MaxConnections   int      `toml:"max_connections"`
	MaxConnPerIP     int      `toml:"max_connections_per_ip"`
	ReadTimeout      Duration `toml:"read_timeout"`
	WriteTimeout     Duration `toml:"write_timeout"`
	DataTimeout      Duration `toml:"data_timeout"`
	ShutdownTimeout  Duration `toml:"shutdown_timeout"`
	SpoolReserve     Size     `toml:"spool_reserve"`
	TLSCert          string   `toml:"tls_cert"`
	TLSKey           string   `toml:"tls_key"`
	AuthFailLimit    int      `toml:"auth_fail_limit"`
	AuthFailWindow   Duration `toml:"auth_fail_window"`
	Users            []User   `toml:"users"`

	relayPrefixes []netip.Prefix
}

// User is one SMTP AUTH account; the password is stored as a bcrypt hash.
type User struct {
	Name         string `toml:"name"`
	PasswordHash string `toml:"password_hash"`
}

// Web configures the HTTP status UI and admin API.
type Web struct {
	Listen string `toml:"listen"`
}

// RelayPrefixes returns the parsed relay_networks.
func (s *SMTP) RelayPrefixes() []netip.Prefix { return s.relayPrefixes }

// EffectiveSpoolReserve is the free space below which new mail is refused:
// the configured spool_reserve, or max(64 MiB, 1.5 × max_message_bytes).
func (s *SMTP) EffectiveSpoolReserve() int64 {
	if s.SpoolReserve > 0 {
		return int64(s.SpoolReserve)
	}
	r := int64(s.MaxMessageBytes) * 3 / 2
	if r < 64<<20 {
		r = 64 << 20
	}
	return r
}

// Default returns the embedded development configuration.
func Default() *Config {
	c, err := Parse("<default>", defaultTOML)
	if err != nil {
		// The embedded file is covered by tests; failing here is a build defect.
		panic("embedded default config is invalid: " + err.Error())
	}
	return c
}

// Load reads and validates a config file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data on top of the embedded defaults, so a file need only name
// what it changes, then validates the result. name is used in error messages.
func Parse(name string, data []byte) (*Config, error) {
	cfg := &Config{}
	if name != "<default>" {
		cfg = Default()
	}
	cfg.Source = name
	dec := toml.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, decodeErrors(name, err)
	}
	if errs := cfg.validate(); len(errs) > 0 {
		lines := keyLines(data)
		var out Errors
		for _, fe := range errs {
			out = append(out, Error{File: name, Line: lines.find(fe.key), Key: fe.key, Msg: fe.msg})
		}
		sort.SliceStable(out, func(i, j int) bool { return out[i].Line < out[j].Line })
		return nil, out
	}
	return cfg, nil
}

// Error is one problem in a config file.
type Error struct {
	File string
	Line int // 0 when the key is absent from the file (a default was invalid)
	Key  string
	Msg  string
}

func (e Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.File, e.Key, e.Msg)
}

// Errors is every problem found in one config file.
type Errors []Error

func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

func decodeErrors(name string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var out Errors
		for _, e := range strict.Errors {
			line, _ := e.Position()
			out = append(out, Error{File: name, Line: line, Key: strings.Join(e.Key(), "."), Msg: "unknown key"})
		}
		return out
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if key == "" {
			key = "(syntax)"
		}
		return Errors{{File: name, Line: line, Key: key, Msg: msg}}
	}
	return Errors{{File: name, Key: "(document)", Msg: err.Error()}}
}

type fieldError struct{ key, msg string }

type checker struct{ errs []fieldError }

func (c *checker) add(key, format string, args ...any) {
	c.errs = append(c.errs, fieldError{key, fmt.Sprintf(format, args...)})
}

// atLeast checks an integer lower bound.
func (c *checker) atLeast(key string, v, min int) {
	if v < min {
		c.add(key, "must be at least %d", min)
	}
}

// positive checks that durations are set and above zero.
func (c *checker) positive(keys []string, vs ...Duration) {
	for i, v := range vs {
		if v <= 0 {
			c.add(keys[i], "must be a positive duration")
		}
	}
}

// addr checks a host:port address. listener=true is for listen keys: empty
// turns the listener off and port 0 picks a free port (tests use it);
// upstream addresses need a real port.
func (c *checker) addr(key, v string, listener bool) {
	if v == "" {
		if !listener {
			c.add(key, "address required")
		}
		return
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		c.add(key, "invalid address %q: want host:port", v)
		return
	}
	if host != "" && strings.ContainsAny(host, " /") {
		c.add(key, "invalid host in %q", v)
	}
	if p, err := parsePort(port); err != nil || (p == 0 && !listener) {
		c.add(key, "invalid port in %q", v)
	}
}

func parsePort(s string) (int, error) {
	var p int
	if s == "" || len(s) > 5 {
		return 0, fmt.Errorf("bad port")
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, fmt.Errorf("bad port")
		}
		p = p*10 + int(r-'0')
	}
	if p > 65535 {
		return 0, fmt.Errorf("bad port")
	}
	return p, nil
}

// prefixes parses CIDRs; a bare address means a single host.
func (c *checker) prefixes(key string, vs []string) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range vs {
		p, err := ParsePrefix(v)
		if err != nil {
			c.add(key, "invalid CIDR %q", v)
			continue
		}
		out = append(out, p)
	}
	return out
}

// ParsePrefix accepts "10.0.0.0/8" or a bare address ("192.0.2.1").
func ParsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func (c *checker) domain(key, v string) {
	if v == "" || len(v) > 253 || strings.ContainsAny(v, " @/:[]") || strings.HasPrefix(v, ".") || strings.Contains(v, "..") {
		c.add(key, "invalid domain %q", v)
	}
}

func (cfg *Config) validate() []fieldError {
	c := &checker{}
	if cfg.Hostname == "" {
		c.add("hostname", "required")
	} else {
		c.domain("hostname", cfg.Hostname)
	}
	if cfg.DataDir == "" {
		c.add("data_dir", "required")
	}
	switch cfg.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		c.add("log_level", "must be debug, info, warn or error, not %q", cfg.LogLevel)
	}
	if cfg.MemoryLimit != 0 && cfg.MemoryLimit < 16<<20 {
		c.add("memory_limit", "must be 0 (no limit) or at least 16M, not %d bytes", int64(cfg.MemoryLimit))
	}
	s := &cfg.SMTP
	c.addr("smtp.listen", s.Listen, true)
	c.addr("smtp.submission_listen", s.SubmissionListen, true)
	c.addr("smtp.tls_listen", s.TLSListen, true)
	s.relayPrefixes = c.prefixes("smtp.relay_networks", s.RelayNetworks)
	for i, d := range s.AcceptedDomains {
		d = strings.TrimSuffix(strings.ToLower(d), ".")
		s.AcceptedDomains[i] = d
		c.domain("smtp.accepted_domains", d)
	}
	if s.MaxMessageBytes < 1024 {
		c.add("smtp.max_message_bytes", "must be at least 1KiB")
	}
	if s.DataMemory < s.MaxMessageBytes+4096 {
		c.add("smtp.data_memory", "must be larger than max_message_bytes (a whole message is held in RAM until it is on flash)")
	}
	c.atLeast("smtp.max_recipients", s.MaxRecipients, 1)
	if s.MaxLineLength < 1000 {
		c.add("smtp.max_line_length", "must be at least 1000 (RFC 5321 §4.5.3.1.6)")
	}
	c.atLeast("smtp.max_received_headers", s.MaxReceived, 1)
	c.atLeast("smtp.max_connections", s.MaxConnections, 1)
	c.atLeast("smtp.max_connections_per_ip", s.MaxConnPerIP, 1)
	c.positive([]string{"smtp.read_timeout", "smtp.write_timeout", "smtp.data_timeout", "smtp.shutdown_timeout", "smtp.auth_fail_window"},
		s.ReadTimeout, s.WriteTimeout, s.DataTimeout, s.ShutdownTimeout, s.AuthFailWindow)
	if s.SpoolReserve < 0 {
		c.add("smtp.spool_reserve", "must not be negative")
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		c.add("smtp.tls_cert", "tls_cert and tls_key go together")
	}
	seen := map[string]bool{}
	for _, u := range s.Users {
		if u.Name == "" {
			c.add("smtp.users", "user without name")
		}
		if seen[u.Name] {
			c.add("smtp.users", "duplicate user %q", u.Name)
		}
		seen[u.Name] = true
		if !strings.HasPrefix(u.PasswordHash, "$2") {
			c.add("smtp.users", "user %q: password_hash must be a bcrypt hash ($2a$/$2b$/$2y$)", u.Name)
		}
	}
	c.addr("web.listen", cfg.Web.Listen, true)
	cfg.Delivery.validate(c)
	cfg.DNS.validate(c)
	return c.errs
}
