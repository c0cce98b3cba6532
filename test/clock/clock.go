// Package clock is the fake clock tests inject in place of time.Now: tests
// move time instead of sleeping. It imports nothing of ours, so any
// package's internal tests can use it without an import cycle.
package clock

import (
	"sync"
	"time"
)

// Clock is a settable, goroutine-safe clock.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// New returns a clock reading start.
func New(start time.Time) *Clock { return &Clock{t: start} }

// Now is the clock's reading; pass c.Now where code wants a func() time.Time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
