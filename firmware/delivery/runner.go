// Package delivery sends the spool upstream: it takes due messages from the
// spool's schedule index in batches, routes each recipient (smarthosts, MX
// records, per-domain routes), delivers over reused go-smtp client sessions,
// and records per-recipient results: delivered, retry later with backoff, or
// failed with an RFC 3464 DSN to the sender.
//
// Two rules shape it. Nothing is lost: a recipient is marked delivered only
// after the upstream's 250, and every local or upstream trouble is a retry,
// never a bounce. And an outage is cheap: a next hop that keeps failing is
// marked down, its mail waits without connection attempts while a light
// probe runs, and the moment the probe answers, every message waiting for
// that hop is dispatched, paced by drain_rate and the concurrency limits.
//
// Memory does not grow with the queue: the runner holds a bounded batch of
// ids in flight, and recovery walks the spool in pages.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/storage"
)

// Options are the daemon-provided dependencies; zero values pick defaults.
type Options struct {
	Logger *slog.Logger
	// Now is the clock for queue decisions (schedule, backoff, lifetime,
	// delay warnings). Pacing and timeouts use the real clock.
	Now func() time.Time
	// BatchSize is how many due ids one schedule-index scan takes (default 256).
	BatchSize int
	// Jitter returns a random value in [0, n) for retry jitter (default
	// math/rand); tests pin it.
	Jitter func(n int64) int64
}

// Runner is the delivery engine. Create it with New, then Start; Close stops it.
type Runner struct {
	cfg      *config.Config
	d        *config.Delivery
	spool    *storage.Spool
	router   *router
	log      *slog.Logger
	now      func() time.Time
	jitter   func(int64) int64
	hostname string
	to       timeouts
	batch    int
	pace     *pacer

	work   chan job
	notify chan string
	wake   chan struct{}
	done   chan struct{}

	mu        sync.Mutex
	inflight  map[string]bool
	hops      map[string]*hop
	pinMu     sync.Mutex
	pinned    []string // names last handed to the resolver
	walking   map[string]bool
	walkAgain map[string]bool
	active    map[*upstream]bool

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	workers sync.WaitGroup
	// settleCh feeds the settlers; its capacity is their number.
	settleCh chan settleJob
	settlers sync.WaitGroup
	started  atomic.Bool
	closed   atomic.Bool

	delivered, deferred, bounced, dsns, attempts atomic.Uint64
}

type job struct {
	id string
	// force attempts the message even if its next attempt is later
	// (flush, hop recovery).
	force bool
}

// New builds a Runner from config. It does not start any goroutine.
func New(cfg *config.Config, spool *storage.Spool, res Resolver, opts Options) (*Runner, error) {
	if cfg == nil || spool == nil {
		return nil, errors.New("delivery: config and spool are required")
	}
	if res == nil {
		res = noResolver{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 256
	}
	if opts.Jitter == nil {
		opts.Jitter = jitter
	}
	rt, err := newRouter(cfg, res)
	if err != nil {
		return nil, fmt.Errorf("delivery: %w", err)
	}
	d := &cfg.Delivery
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runner{
		cfg: cfg, d: d, spool: spool, router: rt,
		log: opts.Logger, now: opts.Now, jitter: opts.Jitter,
		hostname: cfg.Hostname, to: timeoutsFrom(d), batch: opts.BatchSize,
		pace:   newPacer(d.DrainRate),
		work:   make(chan job, d.Concurrency),
		notify: make(chan string, 1024),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}, 1),
		// Enough settlers that a worker rarely waits for one: each holds a
		// result while Badger's group commit fsyncs.
		settleCh: make(chan settleJob, 2*d.Concurrency),

		inflight: map[string]bool{}, hops: map[string]*hop{},
		walking: map[string]bool{}, walkAgain: map[string]bool{}, active: map[*upstream]bool{},
		ctx: ctx, cancel: cancel,
	}
	return r, nil
}

// Start launches the workers and the scheduler. The first scan picks up
// everything already due (mail left from before a restart).
func (r *Runner) Start() {
	if !r.started.CompareAndSwap(false, true) {
		return
	}
	for range r.d.Concurrency {
		r.workers.Add(1)
		go r.worker()
	}
	for range cap(r.settleCh) {
		r.settlers.Add(1)
		go r.settler()
	}
	r.wg.Add(2)
	go r.loop()
	go r.janitor()
	r.log.Info("delivery started", "mode", r.d.Mode, "concurrency", r.d.Concurrency)
}

// Close stops dispatching, lets in-flight transactions finish until ctx
// ends, then cuts the remaining connections. Messages not finished stay
// queued with their schedule unchanged: nothing is lost by stopping.
func (r *Runner) Close(ctx context.Context) error {
	if !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	r.cancel()
	finished := make(chan struct{})
	go func() {
		r.workers.Wait()
		// Results of finished transactions are recorded even when stopping:
		// dropping them would only cause duplicates, but why have those.
		close(r.settleCh)
		r.settlers.Wait()
		r.wg.Wait()
		close(finished)
	}()
	var err error
	select {
	case <-finished:
	case <-ctx.Done():
		err = fmt.Errorf("delivery close: %w; cutting %d connections", ctx.Err(), r.activeCount())
		r.mu.Lock()
		for u := range r.active {
			u.raw.Close()
		}
		r.mu.Unlock()
		select {
		case <-finished:
		case <-time.After(5 * time.Second):
		}
	}
	r.mu.Lock()
	var idle []*upstream
	for _, h := range r.hops {
		idle = append(idle, h.idle...)
		h.idle = nil
	}
	r.mu.Unlock()
	for _, u := range idle {
		u.quit()
	}
	return err
}

func (r *Runner) activeCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.active)
}

// Notify tells the runner a message was just queued: it is attempted now,
// not at the next queue run. It never blocks the SMTP session.
func (r *Runner) Notify(id string) {
	select {
	case r.notify <- id:
	default:
		// Full: the message is due anyway; a scan finds it.
		r.kick()
	}
}

// kick wakes the scheduler for a scan (clock moved, hold released, ...).
func (r *Runner) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// dispatch hands a message to the workers unless it is already in flight.
// It blocks while every worker is busy: that is the back-pressure that keeps
// memory flat however long the queue.
func (r *Runner) dispatch(j job) bool {
	r.mu.Lock()
	if r.inflight[j.id] {
		r.mu.Unlock()
		return false
	}
	r.inflight[j.id] = true
	r.mu.Unlock()
	select {
	case r.work <- j:
		return true
	case <-r.ctx.Done():
		r.mu.Lock()
		delete(r.inflight, j.id)
		r.mu.Unlock()
		return false
	}
}

func (r *Runner) inflightCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.inflight)
}

// maxIdleWait bounds a scheduler sleep, so a clock step or a missed signal
// costs at most this long.
const maxIdleWait = 30 * time.Second

// loop is the scheduler: notified ids first, then due ids from the schedule
// index in batches, then sleep until the next due time or a signal. A
// notification alone dispatches its id without a scan: the schedule has not
// moved for anything else, and under a steady inflow scanning after every
// new message was a third of the daemon's CPU.
func (r *Runner) loop() {
	defer r.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	needScan := true
	waitDone := false
	var deadline time.Time
	for {
		r.drainNotify()
		if r.ctx.Err() != nil {
			return
		}
		if needScan {
			dispatched, full, err := r.scan()
			if r.ctx.Err() != nil {
				return
			}
			wait := maxIdleWait
			waitDone = false
			switch {
			case err != nil:
				r.log.Error("schedule scan failed; retrying", "err", err)
				wait = time.Second
			case full && dispatched > 0:
				continue
			default:
				next, ok, err := r.spool.NextDue()
				if err == nil && ok {
					wait = min(max(next.Sub(r.now()), 0), maxIdleWait)
				}
				if wait == 0 {
					// Everything due is in flight: wait for a worker to finish.
					waitDone, wait = true, time.Second
				}
			}
			deadline = time.Now().Add(wait)
			needScan = false
		}
		timer.Reset(max(time.Until(deadline), 0))
		var done chan struct{}
		if waitDone {
			done = r.done
		}
		select {
		case <-r.ctx.Done():
			return
		case id := <-r.notify:
			r.dispatch(job{id: id})
		case <-r.wake:
			needScan = true
		case <-done:
			needScan = true
		case <-timer.C:
			needScan = true
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

func (r *Runner) drainNotify() {
	for {
		select {
		case id := <-r.notify:
			r.dispatch(job{id: id})
		default:
			return
		}
	}
}

// scan dispatches due messages. In-flight ones sit at the head of the
// schedule until their worker reschedules them, so it asks for that many
// more than a batch.
func (r *Runner) scan() (dispatched int, full bool, err error) {
	limit := r.batch + r.inflightCount()
	due, err := r.spool.Due(r.now(), limit)
	if err != nil {
		return 0, false, err
	}
	for _, d := range due {
		if r.ctx.Err() != nil {
			break
		}
		if r.dispatch(job{id: d.ID}) {
			dispatched++
		}
	}
	return dispatched, len(due) == limit, nil
}

func (r *Runner) worker() {
	defer r.workers.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case j := <-r.work:
			if !r.process(j) {
				r.finish(j.id)
			}
		}
	}
}

// settleJob is a finished attempt waiting to be recorded.
type settleJob struct {
	env       *storage.Envelope
	body      []byte
	results   []*result
	attempted bool
}

// settler records attempts. Recording waits for an fsync; doing it here
// rather than in the worker lets the worker's session carry the next
// message meanwhile, and lets Badger commit many results with one fsync.
// The message stays in flight until its result is on flash.
func (r *Runner) settler() {
	defer r.settlers.Done()
	for sj := range r.settleCh {
		r.settle(sj.env, sj.body, sj.results, sj.attempted)
		r.finish(sj.env.ID)
	}
}

func (r *Runner) finish(id string) {
	r.mu.Lock()
	delete(r.inflight, id)
	r.mu.Unlock()
	select {
	case r.done <- struct{}{}:
	default:
	}
}

// janitor closes idle upstream sessions past idle_timeout and forgets
// next hops nobody used for an hour (MX mode meets many domains).
func (r *Runner) janitor() {
	defer r.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for tick := 0; ; tick++ {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		if tick%10 == 0 {
			r.updatePins()
		}
		now := time.Now()
		var expired []*upstream
		r.mu.Lock()
		for name, h := range r.hops {
			keep := h.idle[:0]
			for _, u := range h.idle {
				if now.Sub(u.idle) >= r.d.IdleTimeout.D() {
					expired = append(expired, u)
				} else {
					keep = append(keep, u)
				}
			}
			clear(h.idle[len(keep):])
			h.idle = keep
			if !h.down && len(h.idle) == 0 && len(h.sem) == 0 && now.Sub(h.lastUsed) > time.Hour {
				delete(r.hops, name)
			}
		}
		r.mu.Unlock()
		for _, u := range expired {
			u.quit()
		}
	}
}

// pacer spaces attempts to drain_rate per second (nil: unlimited). It does
// not save up unused slots: after a quiet hour the drain starts at the
// configured rate, not with a burst.
type pacer struct {
	mu       sync.Mutex
	interval time.Duration
	next     time.Time
}

func newPacer(rate float64) *pacer {
	if rate <= 0 {
		return nil
	}
	return &pacer{interval: time.Duration(float64(time.Second) / rate)}
}

func (p *pacer) wait(ctx context.Context) error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	at := p.next
	p.next = p.next.Add(p.interval)
	p.mu.Unlock()
	if d := time.Until(at); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
