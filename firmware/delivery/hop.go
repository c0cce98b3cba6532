package delivery

import (
	"time"

	"github.com/mxbox/mxbox/storage"
)

// hop is one next hop (a smarthost group, a route, or an MX-looked-up
// domain): its concurrency slots, idle sessions and health.
type hop struct {
	name   string
	route  *route
	domain string // a domain routed here: what an MX hop's probe looks up
	sem    chan struct{}

	// Guarded by Runner.mu.
	down      bool
	fails     int
	lastErr   string
	changed   time.Time // real time of the last up/down change
	lastUsed  time.Time
	idle      []*upstream
	delivered uint64
	deferred  uint64
	failed    uint64
}

// hop returns (creating) the state for a next hop.
func (r *Runner) hop(name string, rt *route, domain string) *hop {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hops[name]
	if h == nil {
		h = &hop{name: name, route: rt, domain: domain, sem: make(chan struct{}, r.d.HopConcurrency), changed: time.Now()}
		r.hops[name] = h
	}
	h.lastUsed = time.Now()
	return h
}

func (h *hop) isDown(r *Runner) (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return h.down, h.lastErr
}

func (r *Runner) hopCount(name string, delivered, deferred, failed uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.hops[name]; h != nil {
		h.delivered += delivered
		h.deferred += deferred
		h.failed += failed
	}
}

// hopOK records that a session to h worked; a down hop comes back up and
// everything waiting for it is dispatched.
func (r *Runner) hopOK(h *hop) {
	r.mu.Lock()
	h.fails = 0
	wasDown := h.down
	if wasDown {
		h.down = false
		h.changed = time.Now()
	}
	r.mu.Unlock()
	if wasDown {
		r.log.Info("next hop up", "hop", h.name)
		r.startWalk(h.name)
	}
}

// hopFailed records an attempt where no host of h could take mail.
func (r *Runner) hopFailed(h *hop, why string) {
	r.mu.Lock()
	h.fails++
	h.lastErr = why
	goingDown := !h.down && h.fails >= r.d.DownAfter
	if goingDown {
		h.down = true
		h.changed = time.Now()
	}
	r.mu.Unlock()
	if goingDown && r.ctx.Err() == nil {
		r.log.Warn("next hop down; probing it", "hop", h.name, "err", why, "probe_interval", r.d.ProbeInterval.D())
		r.wg.Add(1)
		go r.probeLoop(h)
	}
}

func (r *Runner) takeIdle(h *hop) *upstream {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(h.idle) > 0 {
		u := h.idle[len(h.idle)-1]
		h.idle[len(h.idle)-1] = nil
		h.idle = h.idle[:len(h.idle)-1]
		if time.Since(u.idle) < r.d.IdleTimeout.D() {
			return u
		}
		go u.quit()
	}
	return nil
}

func (r *Runner) putIdle(h *hop, u *upstream) {
	if r.d.IdleTimeout <= 0 || r.ctx.Err() != nil {
		go u.quit()
		return
	}
	u.idle = time.Now()
	r.mu.Lock()
	if len(h.idle) < cap(h.sem) {
		h.idle = append(h.idle, u)
		u = nil
	}
	r.mu.Unlock()
	if u != nil {
		go u.quit()
	}
}

// probeLoop checks a down hop every probe_interval with connect + EHLO +
// QUIT until one address answers. Routes to configured hosts are probed at
// a steady interval (that is the "delivered within seconds of recovery"
// promise); MX domains back off to retry_min, since an MX-mode box may know
// thousands of dead domains.
func (r *Runner) probeLoop(h *hop) {
	defer r.wg.Done()
	interval := r.d.ProbeInterval.D()
	for {
		t := time.NewTimer(interval)
		select {
		case <-r.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if down, _ := h.isDown(r); !down {
			return // a delivery or a flush brought it back
		}
		if err := r.probeHop(h); err == nil {
			r.log.Info("probe answered", "hop", h.name)
			r.hopOK(h)
			return
		} else {
			r.mu.Lock()
			h.lastErr = "probe: " + err.Error()
			r.mu.Unlock()
		}
		if !h.route.configured {
			interval = min(interval*2, r.d.RetryMin.D())
		}
	}
}

func (r *Runner) probeHop(h *hop) error {
	targets, rerr := r.router.targets(r.ctx, h.route, h.domain)
	if rerr != nil {
		return errString(rerr.diag)
	}
	var last error = errString("no usable host")
	tried := 0
	for _, t := range targets {
		addrs, err := r.router.addresses(r.ctx, t)
		if err != nil {
			last = err
			continue
		}
		for _, a := range addrs {
			if tried >= r.router.maxAddrs {
				return last
			}
			tried++
			if last = r.probe(r.ctx, a); last == nil {
				return nil
			}
		}
	}
	return last
}

type errString string

func (e errString) Error() string { return string(e) }

// startWalk dispatches every queued message for a next hop ("" = all) now,
// whatever its next attempt time: hop recovery and flush. It pages through
// the spool so memory stays flat at any queue depth; a walk already running
// for the hop is told to go round again instead of starting a second one.
func (r *Runner) startWalk(hopName string) {
	r.mu.Lock()
	if r.walking[hopName] {
		r.walkAgain[hopName] = true
		r.mu.Unlock()
		return
	}
	r.walking[hopName] = true
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			r.walk(hopName)
			r.mu.Lock()
			if !r.walkAgain[hopName] || r.ctx.Err() != nil {
				delete(r.walking, hopName)
				delete(r.walkAgain, hopName)
				r.mu.Unlock()
				return
			}
			delete(r.walkAgain, hopName)
			r.mu.Unlock()
		}
	}()
}

// walkPage bounds one read transaction of a walk.
const walkPage = 256

func (r *Runner) walk(hopName string) {
	after := ""
	var h *hop
	if hopName != "" {
		r.mu.Lock()
		h = r.hops[hopName]
		r.mu.Unlock()
	}
	for r.ctx.Err() == nil {
		var ids []string
		more := false
		scanned := 0
		err := r.spool.Walk(after, func(env *storage.Envelope) bool {
			after = env.ID
			scanned++
			if !env.Held && (hopName == "" || env.NextHop == hopName) {
				ids = append(ids, env.ID)
			}
			if len(ids) >= walkPage || scanned >= 16*walkPage {
				more = true
				return false
			}
			return true
		})
		if err != nil {
			r.log.Error("walk queue", "hop", hopName, "err", err)
			return
		}
		for _, id := range ids {
			if h != nil {
				if down, _ := h.isDown(r); down {
					return // went down again: the next recovery walks anew
				}
			}
			r.dispatch(job{id: id, force: true})
			if r.ctx.Err() != nil {
				return
			}
		}
		if !more {
			return
		}
	}
}
