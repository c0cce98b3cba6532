package smtpd

import (
	"strings"
	"testing"
)

func TestParseAddressCanonicalises(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"User@Example.COM", "User@example.com"},
		{"user@example.com.", "user@example.com"},
		{"a@[192.0.2.1]", "a@[192.0.2.1]"},
		{"a@[IPv6:2001:db8::1]", "a@[IPv6:2001:db8::1]"},
		{"user@other@ours.example", "user@other@ours.example"},
	} {
		a, err := ParseAddress(tc.in)
		if err != nil || a.String() != tc.want {
			t.Errorf("ParseAddress(%q) = %q, %v; want %q", tc.in, a, err, tc.want)
		}
	}
	for _, bad := range []string{"nodomain", "@example.com", "a@", "a@-x.example", "a@x..example", "a@[300.1.1.1]", "a@exa mple.com", "a@example.com..", "a@[IPv6:zz]"} {
		if _, err := ParseAddress(bad); err == nil {
			t.Errorf("ParseAddress(%q) accepted", bad)
		}
	}
}

// FuzzRelayDecision checks the relay rules' invariants on arbitrary
// recipients: an untrusted client only ever gets a recipient accepted whose
// canonical domain is ours and whose local part carries no routing character,
// parsing is stable (canonical form parses to itself), and nothing panics.
func FuzzRelayDecision(f *testing.F) {
	for _, s := range []string{
		"user@ours.example", "user%third.example@ours.example", "user@third.example@ours.example",
		"third.example!user@ours.example", "user@OURS.example.", "user@ours.example.third.example",
		"user@[127.0.0.1]", "δοκιμή@ours.example", "a@b", "@", "user@ours.example..",
	} {
		f.Add(s)
	}
	p := NewPolicy([]string{"ours.example", "Second.Example."})
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			return
		}
		b, err := ParseAddress(a.String())
		if err != nil || b != a {
			t.Fatalf("canonical form %q reparses to %q, %v", a, b, err)
		}
		if p.Decide(a, true) != RelayAccept {
			t.Fatalf("trusted client refused for %q", s)
		}
		if p.Decide(a, false) == RelayAccept {
			if a.Domain != "ours.example" && a.Domain != "second.example" {
				t.Fatalf("untrusted relay to foreign domain %q accepted", a.Domain)
			}
			if strings.ContainsAny(a.Local, "%!@") {
				t.Fatalf("routing local part %q accepted", a.Local)
			}
		}
	})
}
