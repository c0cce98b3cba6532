package delivery

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mxbox/mxbox/storage"
)

func TestBackoffDoublesWithJitterWithinBounds(t *testing.T) {
	mid := func(n int64) int64 { return n / 2 }
	lo := func(int64) int64 { return 0 }
	hi := func(n int64) int64 { return n - 1 }
	cases := []struct {
		attempts int
		rnd      func(int64) int64
		want     time.Duration
	}{
		{1, mid, 5 * time.Minute},
		{2, mid, 10 * time.Minute},
		{3, mid, 20 * time.Minute},
		{4, mid, 40 * time.Minute},
		{5, mid, time.Hour},
		{500, mid, time.Hour},     // no overflow however many attempts
		{1, lo, 5 * time.Minute},  // jitter never goes below retry_min
		{3, lo, 15 * time.Minute}, // 20m - 25%
		{3, hi, 25 * time.Minute}, // 20m + 25%
		{10, hi, time.Hour},       // nor above retry_max
	}
	for _, c := range cases {
		if got := backoff(c.attempts, 5*time.Minute, time.Hour, c.rnd); got != c.want {
			t.Errorf("backoff(%d) = %v, want %v", c.attempts, got, c.want)
		}
	}
	for range 1000 {
		d := backoff(3, 5*time.Minute, time.Hour, jitter)
		if d < 15*time.Minute || d > 25*time.Minute {
			t.Fatalf("jittered backoff %v outside [15m, 25m]", d)
		}
	}
}

func TestOperatorHoldReleaseDeleteFlushBounce(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	port := freePort(t, "127.0.0.3")
	// Recipients at down.test go to a route whose host is down at first.
	f := newFixture(t, smarthosts(s.Addr)+keepDSNs(t)+`
[[delivery.routes]]
name = "later"
domains = ["down.test"]
hosts = ["127.0.0.3:`+itoa(port)+`"]
`, nil)

	held := f.put("a@example.org", "h@example.net")
	if err := f.r.Hold(held); err != nil {
		t.Fatal(err)
	}
	deleted := f.put("a@example.org", "d@down.test")
	bounced := f.put("a@example.org", "b@down.test", "b2@down.test")
	flushed := f.put("a@example.org", "f@down.test")
	f.r.Start()
	for _, id := range []string{deleted, bounced, flushed} {
		f.waitAttempts(id, 1, 5*time.Second)
	}
	time.Sleep(100 * time.Millisecond)
	if len(s.Messages()) != 0 {
		t.Fatalf("held message delivered")
	}

	// List with filters and paging.
	all, next, err := f.r.List(Filter{}, Page{Limit: 10})
	if err != nil || len(all) != 4 || next != "" {
		t.Fatalf("list: %d %q %v", len(all), next, err)
	}
	page1, next, _ := f.r.List(Filter{}, Page{Limit: 3})
	page2, next2, _ := f.r.List(Filter{}, Page{After: next, Limit: 3})
	if len(page1) != 3 || len(page2) != 1 || next2 != "" || page2[0].ID != all[3].ID {
		t.Errorf("paging: %d then %d (cursor %q, %q)", len(page1), len(page2), next, next2)
	}
	hm, _, _ := f.r.List(Filter{State: "held"}, Page{})
	if len(hm) != 1 || hm[0].ID != held {
		t.Errorf("held filter: %+v", hm)
	}
	byRcpt, _, _ := f.r.List(Filter{Recipient: "B2@DOWN"}, Page{})
	if len(byRcpt) != 1 || byRcpt[0].ID != bounced {
		t.Errorf("recipient filter: %+v", byRcpt)
	}
	byHop, _, _ := f.r.List(Filter{NextHop: "later"}, Page{})
	if len(byHop) != 3 {
		t.Errorf("next-hop filter: %d, want 3", len(byHop))
	}

	// Show.
	m, err := f.r.Show(flushed)
	if err != nil || m.State != "deferred" || m.NextHop != "later" || m.Recipients[0].LastError == "" || !m.NextAttempt.After(f.clock.Now()) {
		t.Errorf("show: %+v %v", m, err)
	}
	if _, err := f.r.Show("nonsense"); !errors.Is(err, ErrBadID) {
		t.Errorf("show bad id: %v", err)
	}
	if _, err := f.r.Show("0000000000000"); !errors.Is(err, ErrNotFound) {
		t.Errorf("show unknown id: %v", err)
	}

	// Delete.
	if err := f.r.Delete(deleted); err != nil || f.env(deleted) != nil {
		t.Errorf("delete: %v", err)
	}

	// Bounce: one DSN naming both recipients, message gone.
	if err := f.r.Bounce(bounced); err != nil || f.env(bounced) != nil {
		t.Fatalf("bounce: %v", err)
	}
	ds := f.parsedDSNs()
	if len(ds) != 1 || len(ds[0].Recipients) != 2 || ds[0].Recipients[0].Get("Action") != "failed" ||
		!strings.Contains(ds[0].Recipients[0].Get("Diagnostic-Code"), "cancelled by the operator") {
		t.Fatalf("bounce DSN: %+v", ds)
	}

	// Flush by next hop once the host is back (without waiting for the probe
	// or the 5-minute backoff).
	later := startSink(t, "127.0.0.3", sinkOpts{port: port})
	if err := f.r.Flush("", "later"); err != nil {
		t.Fatal(err)
	}
	f.waitGone(flushed, 5*time.Second)
	later.waitMessages(t, 1, time.Second)

	// Release: delivered at once.
	if err := f.r.Release(held); err != nil {
		t.Fatal(err)
	}
	f.waitGone(held, 5*time.Second)
	s.waitMessages(t, 1, time.Second)
}

func TestFlushOneMessage(t *testing.T) {
	s := startSink(t, "127.0.0.2", sinkOpts{})
	s.SetRcptErr("b@example.net", tempErr)
	f := newFixture(t, smarthosts(s.Addr), nil)
	f.r.Start()
	id := f.put("a@example.org", "b@example.net")
	f.waitAttempts(id, 1, 5*time.Second)
	s.SetRcptErr("b@example.net", nil)
	if err := f.r.Flush(id, ""); err != nil {
		t.Fatal(err)
	}
	f.waitGone(id, 5*time.Second)
}

func TestHealthAndStatsReportDownHop(t *testing.T) {
	f := newFixture(t, smarthosts(deadAddr(t, "127.0.0.2")), nil)
	f.r.Start()
	for range 3 {
		f.put("a@example.org", "b@example.net")
	}
	waitFor(t, 5*time.Second, "hop down", func() bool { return !f.r.Health().OK })
	h := f.r.Health()
	if h.QueueDepth != 3 || len(h.DownHops) != 1 || h.DownHops[0] != "smarthost" {
		t.Errorf("health %+v", h)
	}
	st := f.r.Stats()
	if len(st.Hops) != 1 || st.Hops[0].Up || st.Hops[0].ConsecutiveFailures < 2 || !strings.Contains(st.Hops[0].LastError, "refused") {
		t.Errorf("stats %+v", st.Hops)
	}
	// Mail for a down hop waits without connection attempts.
	before := st.Attempts
	id := f.put("a@example.org", "c@example.net")
	e := f.waitAttempts(id, 1, 5*time.Second)
	if f.r.Stats().Attempts != before || !strings.Contains(e.Recipients[0].LastError, "is down") {
		t.Errorf("message for a down hop was attempted: %+v", e.Recipients[0])
	}
	_ = storage.RcptPending
}
