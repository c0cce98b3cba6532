package delivery

import (
	"fmt"
	"testing"
	"time"

	"github.com/mxbox/mxbox/storage"
)

// TestMailForDownHopIsStoredDeferredAndDrainedOnRecovery: once the next hop
// is known down, a new message is stored already deferred (one write, no
// attempt, no rewrite) and still goes out within seconds of the hop's return.
func TestMailForDownHopIsStoredDeferredAndDrainedOnRecovery(t *testing.T) {
	port := freePort(t, "127.0.0.2")
	f := newFixture(t, smarthosts(fmt.Sprintf("127.0.0.2:%d", port)), nil)
	f.r.Start()
	// down_after (3) failed attempts mark the hop down.
	var early []string
	for i := range 3 {
		id := f.put("a@example.org", fmt.Sprintf("early%d@example.net", i))
		f.waitAttempts(id, 1, 5*time.Second)
		early = append(early, id)
	}
	waitFor(t, 5*time.Second, "hop marked down", func() bool { return !f.r.Health().OK })

	body := []byte("Subject: during the outage\r\n\r\nx\r\n")
	var ids []string
	for i := range 5 {
		env := &storage.Envelope{From: "a@example.org", Recipients: []storage.Recipient{{Addr: fmt.Sprintf("r%d@example.net", i+1)}}}
		f.r.Admit(env)
		if env.NextHop != "smarthost" || !env.NextAttempt.After(f.clock.Now()) {
			t.Fatalf("message for a down hop not stored deferred: next_hop=%q next=%v", env.NextHop, env.NextAttempt)
		}
		id, err := f.spool.Put(env, body)
		if err != nil {
			t.Fatal(err)
		}
		f.r.Queued(env)
		ids = append(ids, id)
	}
	time.Sleep(300 * time.Millisecond)
	for _, id := range ids {
		if e, _ := f.spool.Envelope(id); e.Attempts != 0 {
			t.Fatalf("deferred message %s was attempted (and rewritten) while its hop was down", id)
		}
	}
	up := time.Now()
	s := startSink(t, "127.0.0.2", sinkOpts{port: port})
	for _, id := range append(ids, early...) {
		f.waitGone(id, 5*time.Second)
	}
	s.waitMessages(t, 8, time.Second)
	t.Logf("8 delivered %v after the hop came back", time.Since(up).Round(time.Millisecond))
}
