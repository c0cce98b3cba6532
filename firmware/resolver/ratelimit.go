package resolver

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// limiter is a per-client-address token bucket for UDP queries. UDP source
// addresses can be forged, so an over-limit client is mostly dropped, and
// every second over-limit query gets an empty TC=1 reply ("slip", as in
// BIND's RRL): a real client retries over TCP, which is not limited here.
type limiter struct {
	rate, burst float64
	now         func() time.Time
	seed        maphash.Seed
	shards      [16]limShard
}

type limShard struct {
	mu sync.Mutex
	m  map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
	over   uint32
}

// maxBuckets bounds memory under a spoofed-source flood; when a shard is
// full, buckets idle long enough to have refilled are forgotten.
const maxBuckets = 4096

func newLimiter(rate, burst float64, now func() time.Time) *limiter {
	l := &limiter{rate: rate, burst: burst, now: now, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].m = map[netip.Addr]*bucket{}
	}
	return l
}

type verdict int

const (
	pass verdict = iota
	slip         // answer empty with TC=1
	drop
)

func (l *limiter) check(a netip.Addr) verdict {
	b16 := a.As16()
	s := &l.shards[maphash.Bytes(l.seed, b16[:])%uint64(len(l.shards))]
	now := l.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[a]
	if b == nil {
		if len(s.m) >= maxBuckets {
			full := time.Duration(l.burst / l.rate * float64(time.Second))
			for k, v := range s.m {
				if now.Sub(v.last) > full {
					delete(s.m, k)
				}
			}
			if len(s.m) >= maxBuckets {
				return drop // a flood of distinct sources: shed, keep memory bounded
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		s.m[a] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return pass
	}
	b.over++
	if b.over%2 == 1 {
		return slip
	}
	return drop
}
