package delivery

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mxbox/mxbox/storage"
)

// ErrNotFound is returned by operator methods for an unknown queue id
// (it wraps storage.ErrNotFound).
var ErrNotFound = storage.ErrNotFound

// ErrBadID is returned for something that is not a queue id.
var ErrBadID = errors.New("invalid queue id")

// Filter selects messages for List; empty fields match everything.
type Filter struct {
	Sender    string `json:"sender,omitempty"`    // substring of the envelope sender, case-insensitive
	Recipient string `json:"recipient,omitempty"` // substring of any recipient
	NextHop   string `json:"next_hop,omitempty"`  // exact next-hop name
	// State is "active" (being delivered now), "deferred" (attempted,
	// waiting), "held", "incoming" (not attempted yet) or "".
	State string `json:"state,omitempty"`
}

// Page is a cursor for List: start after the id After, at most Limit
// messages (default 100, max 1000).
type Page struct {
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// Message is one queued message as the operator sees it.
type Message struct {
	*storage.Envelope
	State string `json:"state"`
}

// listScanCap bounds the envelopes one List call reads: a filter that
// matches little returns a short page and a cursor instead of reading a
// million envelopes while the admin request waits.
const listScanCap = 20000

// List returns one page of messages matching f, in arrival order, and the
// cursor for the next page ("" at the end of the queue).
func (r *Runner) List(f Filter, p Page) ([]Message, string, error) {
	if p.Limit <= 0 {
		p.Limit = 100
	}
	p.Limit = min(p.Limit, 1000)
	var out []Message
	next, last := "", ""
	scanned := 0
	err := r.spool.Walk(p.After, func(env *storage.Envelope) bool {
		if len(out) == p.Limit || scanned == listScanCap {
			next = last
			return false
		}
		scanned++
		last = env.ID
		m := r.message(env)
		if f.Match(m) {
			out = append(out, m)
		}
		return true
	})
	if err != nil {
		return nil, "", fmt.Errorf("list queue: %w", err)
	}
	return out, next, nil
}

// Match reports whether a message passes the filter.
func (f Filter) Match(m Message) bool {
	if f.Sender != "" && !strings.Contains(strings.ToLower(m.From), strings.ToLower(f.Sender)) {
		return false
	}
	if f.NextHop != "" && m.NextHop != f.NextHop {
		return false
	}
	if f.State != "" && m.State != f.State {
		return false
	}
	if f.Recipient != "" {
		want := strings.ToLower(f.Recipient)
		if !slices.ContainsFunc(m.Recipients, func(rc storage.Recipient) bool {
			return strings.Contains(strings.ToLower(rc.Addr), want)
		}) {
			return false
		}
	}
	return true
}

func (r *Runner) message(env *storage.Envelope) Message {
	r.mu.Lock()
	active := r.inflight[env.ID]
	r.mu.Unlock()
	return MessageOf(env, active)
}

// MessageOf classifies an envelope for operators; active means a delivery
// attempt is under way (only a running Runner knows).
func MessageOf(env *storage.Envelope, active bool) Message {
	state := "incoming"
	switch {
	case env.Held:
		state = "held"
	case active:
		state = "active"
	case env.Attempts > 0:
		state = "deferred"
	}
	return Message{Envelope: env, State: state}
}

// Show returns one message: envelope, per-recipient status, last error,
// next attempt.
func (r *Runner) Show(id string) (*Message, error) {
	if !storage.ValidID(id) {
		return nil, ErrBadID
	}
	env, err := r.spool.Envelope(id)
	if err != nil {
		return nil, err
	}
	m := r.message(env)
	return &m, nil
}

// Flush attempts messages now (postqueue -f / -s / -i): one message when id
// is set, every message last routed to nextHop when that is set, else the
// whole queue. Down next hops concerned are given a fresh chance. A hop or
// whole-queue flush runs in the background; it returns once started.
func (r *Runner) Flush(id, nextHop string) error {
	if id != "" {
		if !storage.ValidID(id) {
			return ErrBadID
		}
		now := r.now()
		_, err := r.spool.Update(id, func(env *storage.Envelope) error {
			if !env.Held {
				env.NextAttempt = now
			}
			return nil
		})
		if err != nil {
			return err
		}
		r.resetHops(func(h *hop) bool { return false })
		r.kick()
		return nil
	}
	r.resetHops(func(h *hop) bool { return nextHop == "" || h.name == nextHop })
	r.startWalk(nextHop)
	return nil
}

// resetHops marks matching down hops up, so their mail is attempted.
func (r *Runner) resetHops(match func(*hop) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range r.hops {
		if h.down && match(h) {
			h.down, h.fails, h.changed = false, 0, time.Now()
		}
	}
}

// Hold keeps a message from delivery until Release (postsuper -h).
func (r *Runner) Hold(id string) error {
	return r.setHeld(id, true)
}

// Release makes a held message due now (postsuper -H).
func (r *Runner) Release(id string) error {
	if err := r.setHeld(id, false); err != nil {
		return err
	}
	r.kick()
	return nil
}

func (r *Runner) setHeld(id string, held bool) error {
	if !storage.ValidID(id) {
		return ErrBadID
	}
	now := r.now()
	_, err := r.spool.Update(id, func(env *storage.Envelope) error {
		if !held && env.Held {
			env.NextAttempt = now
		}
		env.Held = held
		return nil
	})
	return err
}

// Delete removes a message without notice (postsuper -d). A transaction
// already under way for it may still complete upstream.
func (r *Runner) Delete(id string) error {
	if !storage.ValidID(id) {
		return ErrBadID
	}
	return r.spool.Delete(id)
}

// Bounce fails every pending recipient now, sends the sender one failure
// DSN (unless the sender is null or asked for none), and removes the message.
func (r *Runner) Bounce(id string) error {
	if !storage.ValidID(id) {
		return ErrBadID
	}
	env, body, err := r.spool.Get(id)
	if err != nil {
		return err
	}
	now := r.now()
	var rs []dsnRcpt
	for i := range env.Recipients {
		rc := &env.Recipients[i]
		if rc.State == storage.RcptPending {
			rc.State, rc.Status = storage.RcptFailed, "5.0.0"
			rc.LastError = "delivery cancelled by the operator" + lastErrSuffix(rc.LastError)
		}
		if rc.State == storage.RcptFailed && !rc.DSNSent && env.From != "" && wantsDSN(rc, dsnFailed) {
			rs = append(rs, dsnRcpt{rc, resultOf(rc)})
		}
	}
	if len(rs) > 0 && !r.queueDSN(env, body, dsnFailed, rs, now) {
		return fmt.Errorf("bounce %s: could not queue the DSN; message kept", id)
	}
	r.bounced.Add(uint64(len(rs)))
	return r.spool.Delete(id)
}

func lastErrSuffix(s string) string {
	if s == "" {
		return ""
	}
	return "; last error: " + s
}

// HopStats is one next hop's health and counters.
type HopStats struct {
	Name                string    `json:"name"`
	Up                  bool      `json:"up"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	LastError           string    `json:"last_error,omitempty"`
	Since               time.Time `json:"since"`
	Active              int       `json:"active_connections"`
	Idle                int       `json:"idle_connections"`
	Delivered           uint64    `json:"delivered"`
	Deferred            uint64    `json:"deferred"`
	Failed              uint64    `json:"failed"`
}

// Stats is a snapshot for status pages and metrics. Counters are per
// recipient since start.
type Stats struct {
	Queue     storage.Stats `json:"queue"`
	InFlight  int           `json:"in_flight"`
	Attempts  uint64        `json:"attempts"`
	Delivered uint64        `json:"delivered"`
	Deferred  uint64        `json:"deferred"`
	Bounced   uint64        `json:"bounced"`
	DSNs      uint64        `json:"dsns_queued"`
	Hops      []HopStats    `json:"hops"`
}

// Stats returns counters and per-hop state; no queue scan.
func (r *Runner) Stats() Stats {
	s := Stats{
		Queue: r.spool.Stats(), Attempts: r.attempts.Load(), Delivered: r.delivered.Load(),
		Deferred: r.deferred.Load(), Bounced: r.bounced.Load(), DSNs: r.dsns.Load(),
	}
	r.mu.Lock()
	s.InFlight = len(r.inflight)
	for _, h := range r.hops {
		s.Hops = append(s.Hops, HopStats{
			Name: h.name, Up: !h.down, ConsecutiveFailures: h.fails, LastError: h.lastErr, Since: h.changed,
			Active: len(h.sem), Idle: len(h.idle), Delivered: h.delivered, Deferred: h.deferred, Failed: h.failed,
		})
	}
	r.mu.Unlock()
	slices.SortFunc(s.Hops, func(a, b HopStats) int { return strings.Compare(a.Name, b.Name) })
	return s
}

// Health is the summary the health model and LEDs use.
type Health struct {
	OK         bool     `json:"ok"` // no next hop down
	DownHops   []string `json:"down_hops,omitempty"`
	QueueDepth int64    `json:"queue_depth"`
	Held       int64    `json:"held"`
}

// Health reports whether mail is flowing.
func (r *Runner) Health() Health {
	q := r.spool.Stats()
	h := Health{QueueDepth: q.Messages, Held: q.Held}
	r.mu.Lock()
	for _, hp := range r.hops {
		if hp.down {
			h.DownHops = append(h.DownHops, hp.name)
		}
	}
	r.mu.Unlock()
	slices.Sort(h.DownHops)
	h.OK = len(h.DownHops) == 0
	return h
}
