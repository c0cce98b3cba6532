package delivery

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mxbox/mxbox/storage"
)

// process attempts one message and hands the outcome to a settler; it
// returns false when there was nothing to record.
func (r *Runner) process(j job) bool {
	env, body, err := r.spool.Get(j.id)
	if errors.Is(err, storage.ErrNotFound) {
		return false // delivered, deleted or bounced meanwhile
	}
	if err != nil {
		// Local trouble is never the message's fault: leave it scheduled
		// and slow down so a sick spool is not hammered.
		r.log.Error("read queued message", "id", j.id, "err", err)
		r.sleep(time.Second)
		return false
	}
	if env.Held || (!j.force && env.NextAttempt.After(r.now())) {
		return false // held, or rescheduled since the scan saw it
	}
	results, attempted := r.attempt(env, body)
	r.settleCh <- settleJob{env, body, results, attempted}
	return true
}

func (r *Runner) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.ctx.Done():
	}
}

// group is the recipients of one message that share a next hop.
type group struct {
	hop    *hop
	route  *route
	domain string
	idx    []int
}

// attempt delivers the pending recipients, one transaction per next hop.
// results is indexed like env.Recipients (nil = not pending). attempted is
// false when every group waited for a down next hop.
func (r *Runner) attempt(env *storage.Envelope, body []byte) (results []*result, attempted bool) {
	results = make([]*result, len(env.Recipients))
	var groups []*group
	byHop := map[string]*group{}
	for i := range env.Recipients {
		rc := &env.Recipients[i]
		if rc.State != storage.RcptPending {
			continue
		}
		dom := domainOf(rc.Addr)
		rt, name := r.router.lookup(dom)
		g := byHop[name]
		if g == nil {
			g = &group{hop: r.hop(name, rt, dom), route: rt, domain: dom}
			byHop[name] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
	}
	for _, g := range groups {
		if down, why := g.hop.isDown(r); down {
			res := temporary("4.4.1", fmt.Sprintf("next hop %s is down (%s); waiting for it to come back", g.hop.name, why))
			for _, i := range g.idx {
				results[i] = res
			}
			continue
		}
		attempted = true
		if err := r.pace.wait(r.ctx); err != nil {
			res := temporary("4.3.2", "delivery stopping")
			for _, i := range g.idx {
				results[i] = res
			}
			continue
		}
		rcpts := make([]*storage.Recipient, len(g.idx))
		for k, i := range g.idx {
			rcpts[k] = &env.Recipients[i]
		}
		res := r.deliverGroup(g, env, rcpts, body)
		for k, i := range g.idx {
			results[i] = res[k]
		}
	}
	if len(groups) > 0 {
		env.NextHop = groups[0].hop.name
	}
	return results, attempted
}

// deliverGroup delivers to one next hop: a pooled session first, else the
// hop's hosts in order and each host's addresses, within the caps. Only a
// hop where no host could even start a transaction counts as failing.
func (r *Runner) deliverGroup(g *group, env *storage.Envelope, rcpts []*storage.Recipient, body []byte) []*result {
	h := g.hop
	select {
	case h.sem <- struct{}{}:
	case <-r.ctx.Done():
		return fill(len(rcpts), temporary("4.3.2", "delivery stopping"))
	}
	defer func() { <-h.sem }()
	r.attempts.Add(1)

	if u := r.takeIdle(h); u != nil {
		res, broken := r.run(u, env, rcpts, body)
		if !broken {
			r.putIdle(h, u)
			r.hopOK(h)
			return res
		}
		// A pooled session the upstream dropped while idle: not a verdict
		// on anything; start afresh below.
		u.close()
	}

	targets, rerr := r.router.targets(r.ctx, g.route, g.domain)
	if rerr != nil {
		if !rerr.perm {
			r.hopFailed(h, rerr.diag)
		}
		return fill(len(rcpts), rerr)
	}
	var lastErr string
	var lastHost string
	onlyDNS := true
	tried := 0
	for _, t := range targets {
		if tried >= r.router.maxAddrs && !t.fallback {
			continue
		}
		addrs, err := r.router.addresses(r.ctx, t)
		if err != nil || len(addrs) == 0 {
			if err == nil {
				err = errors.New("no addresses")
			}
			lastErr, lastHost = fmt.Sprintf("resolve %s: %v", t.name, err), t.name
			continue
		}
		for _, a := range addrs {
			if tried >= r.router.maxAddrs && !t.fallback {
				break
			}
			tried++
			if r.ctx.Err() != nil {
				return fill(len(rcpts), temporary("4.3.2", "delivery stopping"))
			}
			u, err := r.dial(r.ctx, g.route, h.name, t.name, a)
			var se *sessionError
			if err != nil && g.route.tlsPolicy == tlsOpportunistic && errors.As(err, &se) && se.stage == "TLS handshake" {
				// Opportunistic TLS that cannot be negotiated falls back to
				// plaintext, as RFC 7435 intends.
				plain := *g.route
				plain.tlsPolicy = tlsNone
				u, err = r.dial(r.ctx, &plain, h.name, t.name, a)
			}
			if err != nil {
				onlyDNS = false
				lastErr, lastHost = fmt.Sprintf("%s[%s]: %v", t.name, a.Addr(), err), t.name
				r.log.Debug("upstream unusable", "hop", h.name, "host", t.name, "addr", a.String(), "err", err)
				continue
			}
			res, broken := r.run(u, env, rcpts, body)
			r.hopOK(h)
			if broken {
				u.close()
			} else {
				r.putIdle(h, u)
			}
			return res
		}
	}
	if lastErr == "" {
		lastErr = "no usable host"
	}
	r.hopFailed(h, lastErr)
	status := "4.4.1"
	if onlyDNS {
		status = "4.4.3"
	}
	res := temporary(status, lastErr)
	res.remote = lastHost
	return fill(len(rcpts), res)
}

// run is deliverTx with the session registered, so Close can cut it.
func (r *Runner) run(u *upstream, env *storage.Envelope, rcpts []*storage.Recipient, body []byte) ([]*result, bool) {
	r.mu.Lock()
	r.active[u] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.active, u)
		r.mu.Unlock()
	}()
	return r.deliverTx(u, env, rcpts, body)
}

func fill(n int, res *result) []*result {
	out := make([]*result, n)
	for i := range out {
		out[i] = res
	}
	return out
}

// settle records results: delivered, failed (DSN), or retry later. DSNs are
// queued before the state that says they were sent, so a crash between the
// two repeats a DSN instead of losing it.
func (r *Runner) settle(env *storage.Envelope, body []byte, results []*result, attempted bool) {
	now := r.now()
	d := r.d
	// A deferral while the next hop is down counts too: it is what makes
	// the backoff grow, so a long outage rewrites each envelope less and
	// less often instead of every retry_min.
	env.Attempts++
	var lastErr string
	for i, res := range results {
		if res == nil {
			continue
		}
		rc := &env.Recipients[i]
		if res.perm && d.SoftBounce {
			soft := *res
			soft.perm = false
			soft.status = "4" + strings.TrimLeft(soft.status, "5")
			res = &soft
		}
		rc.Status = res.status
		rc.Updated = now
		if attempted {
			rc.Attempts++
		}
		status := "deferred"
		switch {
		case res.ok:
			status = "sent"
			rc.State = storage.RcptDelivered
			rc.LastError = ""
			r.delivered.Add(1)
			r.hopCount(env.NextHop, 1, 0, 0)
		case res.perm:
			status = "bounced"
			rc.State = storage.RcptFailed
			rc.LastError = res.diag
			r.bounced.Add(1)
			r.hopCount(env.NextHop, 0, 0, 1)
		default:
			rc.LastError = res.diag
			lastErr = res.diag
			r.deferred.Add(1)
			r.hopCount(env.NextHop, 0, 1, 0)
		}
		// One line per recipient and attempt, like Postfix's status= lines:
		// the trail an operator greps when a customer asks where mail went.
		r.log.Info("delivery", "id", env.ID, "to", rc.Addr, "hop", env.NextHop, "relay", res.remote,
			"status", status, "dsn", res.status, "reply", res.diag, "attempts", rc.Attempts)
	}
	if lastErr != "" {
		env.LastError = lastErr
	}

	pending := env.Pending()
	expired := len(pending) > 0 && now.Sub(env.Received) >= d.MaxQueueLifetime.D()
	if expired {
		for _, rc := range pending {
			rc.State = storage.RcptFailed
			rc.Status = "5.4.7"
			rc.LastError = fmt.Sprintf("delivery time expired: queued for %s; last error: %s",
				now.Sub(env.Received).Round(time.Minute), rc.LastError)
			r.bounced.Add(1)
		}
		pending = nil
	}

	// Delay warning (RFC 3464 Action: delayed), once per message.
	if len(pending) > 0 && d.DelayWarning > 0 && !env.DelayWarned && now.Sub(env.Received) >= d.DelayWarning.D() {
		var rs []dsnRcpt
		if env.From != "" {
			for _, rc := range pending {
				if wantsDSN(rc, dsnDelayed) {
					rs = append(rs, dsnRcpt{rc, resultOf(rc)})
				}
			}
		}
		if len(rs) == 0 || r.queueDSN(env, body, dsnDelayed, rs, now) {
			env.DelayWarned = true
		}
	}

	// Failure DSN for every failed recipient not yet reported.
	var rs []dsnRcpt
	for i := range env.Recipients {
		rc := &env.Recipients[i]
		if rc.State != storage.RcptFailed || rc.DSNSent {
			continue
		}
		if env.From == "" || !wantsDSN(rc, dsnFailed) {
			// A DSN about a DSN is never sent (RFC 3461 §6.2).
			rc.DSNSent = true
			continue
		}
		res := results[i]
		if res == nil || !res.perm || expired {
			res = resultOf(rc)
		}
		rs = append(rs, dsnRcpt{rc, res})
	}
	dsnOK := len(rs) == 0 || r.queueDSN(env, body, dsnFailed, rs, now)
	if dsnOK {
		for _, x := range rs {
			x.rc.DSNSent = true
		}
	}

	if env.Done() && dsnOK {
		if err := r.spool.Delete(env.ID); err == nil || errors.Is(err, storage.ErrNotFound) {
			return
		} else {
			r.log.Error("delete finished message; recording its state instead", "id", env.ID, "err", err)
		}
	}
	var next time.Time
	switch {
	case len(pending) > 0:
		next = now.Add(backoff(env.Attempts, d.RetryMin.D(), d.RetryMax.D(), r.jitter))
		if end := env.Received.Add(d.MaxQueueLifetime.D()); next.After(end) && now.Before(end) {
			// One last attempt when the lifetime ends, not a whole backoff later.
			next = end
		}
	default:
		// Only a DSN that could not be queued holds the message.
		next = now.Add(d.RetryMin.D())
	}
	_, err := r.spool.Update(env.ID, func(cur *storage.Envelope) error {
		if len(cur.Recipients) != len(env.Recipients) {
			return fmt.Errorf("recipient list changed under delivery")
		}
		for i := range cur.Recipients {
			c, e := &cur.Recipients[i], &env.Recipients[i]
			c.State, c.Status, c.LastError, c.Attempts, c.Updated, c.DSNSent = e.State, e.Status, e.LastError, e.Attempts, e.Updated, e.DSNSent
		}
		cur.Attempts, cur.LastError, cur.NextHop, cur.DelayWarned = env.Attempts, env.LastError, env.NextHop, env.DelayWarned
		cur.NextAttempt = next
		return nil
	})
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		r.log.Error("record delivery result", "id", env.ID, "err", err)
	}
}

// resultOf rebuilds a result from what storage kept for a recipient.
func resultOf(rc *storage.Recipient) *result {
	diag := rc.LastError
	isSMTP := len(diag) >= 4 && diag[3] == ' ' && diag[0] >= '2' && diag[0] <= '5' && diag[1] >= '0' && diag[1] <= '9'
	st := rc.Status
	if st == "" {
		st = "4.0.0"
	}
	return &result{perm: rc.State == storage.RcptFailed, status: st, diag: diag, smtpDiag: isSMTP}
}

// queueDSN puts a DSN for env into the spool and triggers its delivery.
func (r *Runner) queueDSN(env *storage.Envelope, body []byte, kind dsnKind, rs []dsnRcpt, now time.Time) bool {
	msg := buildDSN(r.hostname, env, body, kind, rs, now, env.Received.Add(r.d.MaxQueueLifetime.D()))
	dsn := &storage.Envelope{From: "", Recipients: []storage.Recipient{{Addr: env.From}}}
	id, err := r.spool.Put(dsn, msg)
	if err != nil {
		r.log.Error("queue DSN; will retry", "id", env.ID, "kind", string(kind), "err", err)
		return false
	}
	r.dsns.Add(1)
	r.log.Info("DSN queued", "id", env.ID, "dsn", id, "action", string(kind), "to", env.From, "recipients", len(rs))
	r.Notify(id)
	return true
}
