package delivery

import (
	"math/rand/v2"
	"time"
)

// backoff returns the wait before the next attempt after `attempts` failed
// ones: retryMin doubled per attempt, capped at retryMax, then ±25% jitter
// so messages that failed together do not retry together. Integer
// nanoseconds throughout: no float rounding, no overflow (doubling stops at
// the cap, and durations are far below 2^62 ns).
func backoff(attempts int, retryMin, retryMax time.Duration, rnd func(int64) int64) time.Duration {
	d := int64(retryMin)
	hi := int64(retryMax)
	for i := 1; i < attempts && d < hi; i++ {
		d <<= 1
	}
	d = min(d, hi)
	if j := d / 4; j > 0 {
		d = d - j + rnd(2*j+1)
	}
	return time.Duration(min(max(d, int64(retryMin)), hi))
}

// jitter is the default random source for backoff.
func jitter(n int64) int64 { return rand.Int64N(n) }
