package delivery

import (
	"fmt"

	"github.com/mxbox/mxbox/storage"
)

// Admit is called for a new message before it is stored. When every
// recipient goes to one next hop that is known to be down, the message is
// stored already deferred: NextHop names the hop, so the hop's recovery walk
// dispatches it the moment a probe answers, and NextAttempt is the first
// backoff. Without this, each message accepted during an outage would be
// attempted at once, found "next hop down" and rewritten: two synced writes
// per message instead of one, exactly when the box is busiest.
func (r *Runner) Admit(env *storage.Envelope) {
	name := ""
	for i := range env.Recipients {
		_, n := r.router.lookup(domainOf(env.Recipients[i].Addr))
		if name != "" && n != name {
			return // several next hops: attempt those that are up
		}
		name = n
	}
	if !r.hopDown(name) {
		return
	}
	now := r.now()
	env.NextHop = name
	env.NextAttempt = now.Add(backoff(1, r.d.RetryMin.D(), r.d.RetryMax.D(), r.jitter))
	env.LastError = fmt.Sprintf("next hop %s is down; waiting for it to come back", name)
}

// Queued is called once a message is on flash: a message Admit deferred
// waits for its hop's recovery; any other is attempted now. If the hop came
// back between Admit and the commit, its recovery walk may have passed this
// message by, so it is made due and attempted now.
func (r *Runner) Queued(env *storage.Envelope) {
	if env.NextHop == "" || !env.NextAttempt.After(env.Received) {
		r.Notify(env.ID)
		return
	}
	if r.hopDown(env.NextHop) {
		return
	}
	now := r.now()
	if _, err := r.spool.Update(env.ID, func(e *storage.Envelope) error { e.NextAttempt = now; return nil }); err != nil {
		r.log.Warn("make deferred message due", "id", env.ID, "err", err)
	}
	r.Notify(env.ID)
}

// hopDown reports whether a next hop is known and marked down.
func (r *Runner) hopDown(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hops[name]
	return h != nil && h.down
}
