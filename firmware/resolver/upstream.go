package resolver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

const (
	firstTryTimeout = 800 * time.Millisecond // before an RTT is known
	minTryTimeout   = 150 * time.Millisecond
	maxTryTimeout   = 1500 * time.Millisecond
	failuresToDown  = 3
	minBackoff      = time.Second
	maxBackoff      = time.Minute
	probeEvery      = 16 // every Nth query tries the second-fastest first, to keep its RTT honest
)

// forwarder is one upstream resolver with its health.
type forwarder struct {
	addr string

	mu        sync.Mutex
	srtt      time.Duration // smoothed RTT; 0 = unknown
	fails     int           // consecutive failures
	downUntil time.Time
	backoff   time.Duration

	queries, failures atomic.Uint64
}

func (f *forwarder) tryTimeout() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srtt == 0 {
		return firstTryTimeout
	}
	return min(max(4*f.srtt+50*time.Millisecond, minTryTimeout), maxTryTimeout)
}

func (f *forwarder) success(rtt time.Duration) {
	f.mu.Lock()
	if f.srtt == 0 {
		f.srtt = rtt
	} else {
		f.srtt = (7*f.srtt + 3*rtt) / 10
	}
	f.fails, f.backoff, f.downUntil = 0, 0, time.Time{}
	f.mu.Unlock()
}

// failure counts a timeout or bad answer; after a few in a row the
// forwarder is skipped for a backoff that doubles up to a minute, after
// which it is tried again ("re-probed"), never written off for good.
func (f *forwarder) failure(now time.Time, timeout time.Duration) {
	f.failures.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fails++
	f.srtt = min(max(f.srtt*2, timeout), 5*time.Second)
	if f.fails >= failuresToDown {
		f.backoff = min(max(2*f.backoff, minBackoff), maxBackoff)
		f.downUntil = now.Add(f.backoff)
	}
}

// order ranks the healthy forwarders by smoothed RTT (the configured order
// breaks ties, so an unmeasured list is tried in order). Forwarders in
// backoff are left out until it ends: waiting on a known-dead upstream
// would only delay the stale answer or the recursion fallback. Every
// probeEvery-th query swaps the two best so the runner-up's RTT stays
// measured.
func (r *Resolver) order(now time.Time) []*forwarder {
	type ranked struct {
		f    *forwarder
		down bool
		key  time.Duration
		idx  int
	}
	rs := make([]ranked, len(r.fwd))
	healthy := 0
	for i, f := range r.fwd {
		f.mu.Lock()
		down := now.Before(f.downUntil)
		key := f.srtt
		if down {
			key = f.downUntil.Sub(now)
		}
		f.mu.Unlock()
		if !down {
			healthy++
		}
		rs[i] = ranked{f, down, key, i}
	}
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if a.down != b.down {
			return !a.down
		}
		return a.key < b.key
	})
	if healthy >= 2 && r.fwdCount.Add(1)%probeEvery == 0 {
		rs[0], rs[1] = rs[1], rs[0]
	}
	out := make([]*forwarder, 0, healthy)
	for _, x := range rs[:healthy] {
		out = append(out, x.f)
	}
	return out
}

// forward asks the forwarders in rank order within ctx's deadline: a
// timeout, SERVFAIL, REFUSED or a truncated answer that TCP cannot complete
// moves on to the next one.
func (r *Resolver) forward(ctx context.Context, name string, qtype uint16, do bool) (*dns.Msg, error) {
	var errs []string
	for _, f := range r.order(r.now()) {
		if ctx.Err() != nil {
			break
		}
		f.queries.Add(1)
		timeout := f.tryTimeout()
		m, rtt, err := exchange(ctx, f.addr, name, qtype, do, true, timeout)
		var re rcodeError
		if errors.As(err, &re) {
			// It answered, just not usefully (SERVFAIL for one broken
			// domain says little about the forwarder): keep its RTT, count
			// the failure, ask the next one.
			f.failures.Add(1)
			f.success(rtt)
			errs = append(errs, fmt.Sprintf("%s: %v", f.addr, err))
			continue
		}
		if err != nil {
			f.failure(r.now(), timeout)
			errs = append(errs, fmt.Sprintf("%s: %v", f.addr, err))
			continue
		}
		f.success(rtt)
		return m, nil
	}
	if len(errs) == 0 {
		errs = append(errs, "all in backoff or no time left")
	}
	return nil, &TempError{Name: name, Reason: "forwarders failed: " + strings.Join(errs, "; ")}
}

var errTruncated = errors.New("truncated over TCP")

// rcodeError is an upstream answer with an rcode other than NOERROR/NXDOMAIN.
type rcodeError int

func (e rcodeError) Error() string { return "rcode " + dns.RcodeToString[int(e)] }

// exchange sends one question to addr over UDP (EDNS 1232) and repeats it
// over TCP when the answer is truncated: a truncated answer is never final.
// Only NOERROR and NXDOMAIN count as answers.
func exchange(ctx context.Context, addr, name string, qtype uint16, do, rd bool, timeout time.Duration) (*dns.Msg, time.Duration, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = rd
	q.SetEdns0(ednsSize, do)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return nil, 0, context.DeadlineExceeded
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	c := &dns.Client{Net: "udp", UDPSize: ednsSize, Timeout: timeout}
	m, _, err := c.ExchangeContext(tctx, q, addr)
	if err == nil && m.Truncated {
		c.Net = "tcp"
		m, _, err = c.ExchangeContext(tctx, q, addr)
		if err == nil && m.Truncated {
			err = errTruncated
		}
	}
	rtt := time.Since(start)
	if err != nil {
		return nil, rtt, err
	}
	if len(m.Question) != 1 || !strings.EqualFold(m.Question[0].Name, name) || m.Question[0].Qtype != qtype {
		return nil, rtt, errors.New("answer for another question")
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		return nil, rtt, rcodeError(m.Rcode)
	}
	return m, rtt, nil
}
