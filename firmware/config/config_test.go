package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEmbeddedDefaultsAreValidAndLoopbackOnly(t *testing.T) {
	c := Default()
	for key, addr := range map[string]string{"smtp.listen": c.SMTP.Listen, "smtp.submission_listen": c.SMTP.SubmissionListen, "dns.listen": c.DNS.Listen, "web.listen": c.Web.Listen} {
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Errorf("%s = %q: development defaults must stay on loopback", key, addr)
		}
	}
	if c.SMTP.Listen != "127.0.0.1:2525" || c.SMTP.SubmissionListen != "127.0.0.1:2587" || c.DNS.Listen != "127.0.0.1:5353" || c.Web.Listen != "127.0.0.1:8080" || c.DataDir != "./var/mxbox" {
		t.Errorf("defaults changed: %+v", c)
	}
	if len(c.Delivery.Smarthosts) != 1 || c.Delivery.Smarthosts[0] != "127.0.0.1:10025" {
		t.Errorf("default smarthost %v, want 127.0.0.1:10025", c.Delivery.Smarthosts)
	}
	if len(c.DNS.Forwarders) != 0 {
		t.Errorf("default forwarders %v: nothing may leave the machine by default", c.DNS.Forwarders)
	}
	if got := c.SMTP.EffectiveSpoolReserve(); got != 64<<20 {
		t.Errorf("reserve %d, want 64MiB for 25M messages", got)
	}
}

func TestDefaultTextDocumentsEveryKey(t *testing.T) {
	// Every non-comment key line must be preceded by a comment line.
	lines := strings.Split(string(DefaultText()), "\n")
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "[") {
			continue
		}
		j := i - 1
		for j >= 0 && !strings.HasPrefix(strings.TrimSpace(lines[j]), "#") && strings.TrimSpace(lines[j]) != "" && !strings.HasPrefix(strings.TrimSpace(lines[j]), "[") {
			j-- // a group of related keys may share one comment
		}
		if j < 0 || !strings.HasPrefix(strings.TrimSpace(lines[j]), "#") {
			t.Errorf("default.toml line %d %q has no comment", i+1, l)
		}
	}
}

func TestErrorsNameFileLineAndKey(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		line      int
		key, msg  string
	}{
		{"unknown key", "hostname = \"a.example\"\n[smtp]\nlisten = \"127.0.0.1:25\"\nlisten_typo = 1\n", 4, "smtp.listen_typo", "unknown key"},
		{"wrong type", "[smtp]\n\nmax_recipients = \"many\"\n", 3, "smtp.max_recipients", ""},
		{"bad CIDR", "[smtp]\nrelay_networks = [\n  \"10.0.0.0/8\",\n  \"10.0.0/33\",\n]\n", 2, "smtp.relay_networks", "invalid CIDR"},
		{"bad address", "\n[dns]\nlisten = \"127.0.0.1\"\n", 3, "dns.listen", "invalid address"},
		{"bad size", "[smtp]\nmax_message_bytes = \"25 parsecs\"\n", 2, "smtp.max_message_bytes", "invalid size"},
		{"bad duration", "[delivery]\nretry_min = \"soon\"\n", 2, "delivery.retry_min", "invalid duration"},
		{"syntax", "hostname = \n", 1, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/etc/mxbox.toml", []byte(tc.doc))
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("err = %v, want config.Errors", err)
			}
			e := es[0]
			if e.File != "/etc/mxbox.toml" || e.Line != tc.line || (tc.key != "" && e.Key != tc.key) || !strings.Contains(e.Msg, tc.msg) {
				t.Fatalf("got %+v (%q), want line %d key %q msg ~%q", e, e.Error(), tc.line, tc.key, tc.msg)
			}
			if !strings.HasPrefix(e.Error(), "/etc/mxbox.toml:") {
				t.Fatalf("message does not start with file:line: %q", e.Error())
			}
		})
	}
}

func TestFileOverridesOnlyWhatItNames(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "mxbox.toml")
	os.WriteFile(p, []byte("hostname = \"mx.example.net\"\n[smtp]\naccepted_domains = [\"Customer.Example.\"]\nmax_message_bytes = \"10M\"\n"), 0o600)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Hostname != "mx.example.net" || c.SMTP.Listen != "127.0.0.1:2525" || c.SMTP.MaxMessageBytes != 10<<20 || c.SMTP.AcceptedDomains[0] != "customer.example" {
		t.Fatalf("%+v", c.SMTP)
	}
	if len(c.SMTP.RelayPrefixes()) != 2 {
		t.Fatalf("relay prefixes %v", c.SMTP.RelayPrefixes())
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "64k": 64 << 10, "25MiB": 25 << 20, "1G": 1 << 30, "3 M": 3 << 20} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "M", "-1", "5X", "99999999999999999999"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}
