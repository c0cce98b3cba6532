package delivery

import (
	"net/netip"
	"slices"
)

// Pinner is implemented by a resolver that can keep names fresh and
// unevicted (firmware/resolver does). Delivery pins the names of every next
// hop it holds mail for, so a DNS outage cannot strand that mail.
type Pinner interface {
	Pin(names []string)
}

// pinNames lists the DNS names behind the current next hops: MX hops by
// their domain (the resolver pins the MX targets too), smarthost hops by
// each configured host name, plus the fallback relays. IP literals need no
// DNS and are left out. Sorted, so an unchanged set compares equal.
func (r *Runner) pinNames() []string {
	set := map[string]bool{}
	add := func(name string) {
		if _, err := netip.ParseAddr(name); err == nil || name == "" {
			return
		}
		set[name] = true
	}
	for _, h := range r.router.fallback {
		add(h.Name)
	}
	r.mu.Lock()
	for _, h := range r.hops {
		if h.route == nil || h.route.hosts == nil {
			add(h.domain)
			continue
		}
		for _, host := range h.route.hosts {
			add(host.Name)
		}
	}
	r.mu.Unlock()
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// updatePins hands the resolver the current set when it changed.
func (r *Runner) updatePins() {
	p, ok := r.router.resolver.(Pinner)
	if !ok || p == nil {
		return
	}
	names := r.pinNames()
	r.pinMu.Lock()
	defer r.pinMu.Unlock()
	if slices.Equal(names, r.pinned) {
		return
	}
	r.pinned = names
	p.Pin(names)
}
