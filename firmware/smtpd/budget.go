package smtpd

import (
	"sync"
	"time"
)

// memBudget bounds the bytes of message bodies held in RAM across all
// sessions. A body is buffered whole so that it can be written in the same
// transaction as its envelope; without a bound, 200 clients sending 25 MB
// each would take 5 GB on a 256 MB board. A session that cannot get room
// waits (the client is throttled by TCP back-pressure meanwhile) and, past
// its deadline, gets a 451.
type memBudget struct {
	mu      sync.Mutex
	free    int64
	changed chan struct{} // closed and replaced on every release
}

func newMemBudget(total int64) *memBudget {
	return &memBudget{free: total, changed: make(chan struct{})}
}

// acquire takes n bytes, waiting until deadline; false means it timed out.
func (b *memBudget) acquire(n int64, deadline time.Time) bool {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		b.mu.Lock()
		if b.free >= n {
			b.free -= n
			b.mu.Unlock()
			return true
		}
		ch := b.changed
		b.mu.Unlock()
		wait := time.Until(deadline)
		if wait <= 0 {
			return false
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
}

func (b *memBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.free += n
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// bodyBuffer reads a message into one slice that keeps headRoom free bytes
// in front, so our trace headers can be prepended without copying the body,
// charging every allocation to the budget first.
type bodyBuffer struct {
	budget   *memBudget
	deadline time.Time
	buf      []byte
	held     int64
}

const headRoom = 2048 // Received + Message-ID + Date fit in this

func (bb *bodyBuffer) grow(want int) bool {
	if cap(bb.buf) >= want {
		return true
	}
	newCap := max(want, 2*cap(bb.buf))
	if !bb.budget.acquire(int64(newCap)-bb.held, bb.deadline) {
		return false
	}
	nb := make([]byte, len(bb.buf), newCap)
	copy(nb, bb.buf)
	bb.buf = nb
	// The old slice is garbage now: only the increment was charged.
	bb.held = int64(newCap)
	return true
}

// prepend puts p in front of the body inside the head room and returns the
// whole message.
func (bb *bodyBuffer) prepend(p []byte) []byte {
	if len(p) <= headRoom {
		start := headRoom - len(p)
		copy(bb.buf[start:], p)
		return bb.buf[start:]
	}
	out := make([]byte, 0, len(p)+len(bb.buf)-headRoom)
	return append(append(out, p...), bb.buf[headRoom:]...)
}

func (bb *bodyBuffer) free() {
	bb.budget.release(bb.held)
	bb.held = 0
	bb.buf = nil
}
