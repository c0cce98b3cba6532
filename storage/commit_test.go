package storage

import (
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// TestGroupCommitFailingOpDoesNotTouchOthers: ops that share a group
// transaction are isolated: one failing op gets its own error and the
// others' writes still land, exactly once.
func TestGroupCommitFailingOpDoesNotTouchOthers(t *testing.T) {
	s := openTest(t, t.TempDir(), nil)
	defer s.Close()
	boom := errors.New("boom")
	var ops []*commitOp
	afterRuns := 0
	for i, fail := range []bool{false, true, false} {
		key := []byte{prefixBlob, 'g', byte('0' + i)}
		ops = append(ops, &commitOp{
			apply: func(txn *badger.Txn) error {
				if err := txn.Set(key, []byte("v")); err != nil {
					return err
				}
				if fail {
					return boom // after a write: the group must drop it
				}
				return nil
			},
			after: func() { afterRuns++ },
			done:  make(chan error, 1),
		})
	}
	s.commitGroup(ops)
	for i, op := range ops {
		err := <-op.done
		if (i == 1) != errors.Is(err, boom) {
			t.Fatalf("op %d: err %v", i, err)
		}
	}
	if afterRuns != 2 {
		t.Fatalf("after hooks ran %d times, want 2", afterRuns)
	}
	for i, want := range []bool{true, false, true} {
		v, err := s.LoadBlob("g" + string(rune('0'+i)))
		if err != nil || (v != nil) != want {
			t.Fatalf("blob g%d = %q, %v; want present=%v", i, v, err, want)
		}
	}
}

// TestConcurrentWritersShareCommits: Puts, Updates and Deletes from many
// goroutines all land through the committer, with counters right.
func TestConcurrentWritersShareCommits(t *testing.T) {
	s := openTest(t, t.TempDir(), nil)
	defer s.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for w := 0; w < 20; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				id, err := s.Put(env("a@x.org", "b@y.org"), []byte("body"))
				if err != nil {
					errs <- err
					return
				}
				if _, err := s.Update(id, func(e *Envelope) error { e.Attempts++; return nil }); err != nil {
					errs <- err
					return
				}
				if i%2 == 0 {
					if err := s.Delete(id); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Messages != 20*12 {
		t.Fatalf("messages = %d, want %d", st.Messages, 20*12)
	}
	if err := s.Delete("0000000000000"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of unknown id: %v", err)
	}
}

// TestDueFindsMessageScheduledBeforeEarlierScans: scans skip the head of
// the schedule index they have seen empty, but a message put or moved
// before that point afterwards is still found.
func TestDueFindsMessageScheduledBeforeEarlierScans(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	s := openTest(t, t.TempDir(), func() time.Time { return now })
	defer s.Close()
	// A head of delivered messages (tombstones), then one due in an hour.
	for i := 0; i < 50; i++ {
		id, err := s.Put(env("a@x.org", "b@y.org"), []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(id); err != nil {
			t.Fatal(err)
		}
	}
	late := env("a@x.org", "b@y.org")
	late.NextAttempt = now.Add(time.Hour)
	lateID, _ := s.Put(late, []byte("x"))
	if d, _ := s.Due(now, 10); len(d) != 0 {
		t.Fatalf("due = %v, want none", d)
	}
	if next, ok, _ := s.NextDue(); !ok || !next.Equal(now.Add(time.Hour)) {
		t.Fatalf("NextDue = %v %v", next, ok)
	}
	// Now one due a minute ago: below everything the scans saw.
	early := env("a@x.org", "c@y.org")
	early.NextAttempt = now.Add(-time.Minute)
	earlyID, _ := s.Put(early, []byte("x"))
	if d, _ := s.Due(now, 10); len(d) != 1 || d[0].ID != earlyID {
		t.Fatalf("due = %v, want %s", d, earlyID)
	}
	// And the late one moved earlier by an Update (a flush).
	if _, err := s.Update(lateID, func(e *Envelope) error { e.NextAttempt = now.Add(-time.Hour); return nil }); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Due(now, 10); len(d) != 2 || d[0].ID != lateID || d[1].ID != earlyID {
		t.Fatalf("due = %v, want %s then %s", d, lateID, earlyID)
	}
	// Everything gone: no due, no next.
	s.Delete(lateID)
	s.Delete(earlyID)
	if _, ok, _ := s.NextDue(); ok {
		t.Fatal("NextDue on an empty schedule")
	}
	again := env("a@x.org", "d@y.org")
	again.NextAttempt = now.Add(-2 * time.Hour)
	againID, _ := s.Put(again, []byte("x"))
	if d, _ := s.Due(now, 10); len(d) != 1 || d[0].ID != againID {
		t.Fatalf("due after empty = %v, want %s", d, againID)
	}
}

// TestHeldCountFromIndexAndMigration: the held counter survives reopen
// from the H index alone, and a spool written before that index (no marker,
// no H keys) is migrated once at open.
func TestHeldCountFromIndexAndMigration(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, nil)
	var ids []string
	for i := 0; i < 5; i++ {
		e := env("a@x.org", "b@y.org")
		e.Held = i == 0 // held at Put
		id, err := s.Put(e, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if _, err := s.Update(ids[1], func(e *Envelope) error { e.Held = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ids[2], func(e *Envelope) error { e.Held = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ids[2], func(e *Envelope) error { e.Held = false; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ids[0]); err != nil { // a held one deleted
		t.Fatal(err)
	}
	s.Close()

	s = openTest(t, dir, nil)
	if st := s.Stats(); st.Messages != 4 || st.Held != 1 {
		t.Fatalf("after reopen: %+v", st)
	}
	// Make it look like a spool from before the index.
	err := s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(metaHeldIndex); err != nil {
			return err
		}
		return txn.Delete(heldKey(ids[1]))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	dropSavedCounters(t, dir) // and nothing saved by a clean Close

	s = openTest(t, dir, nil)
	defer s.Close()
	if st := s.Stats(); st.Messages != 4 || st.Held != 1 {
		t.Fatalf("after migration: %+v", st)
	}
	if ok, _ := s.hasMeta(metaHeldIndex); !ok {
		t.Fatal("marker not written by the migration")
	}
	if ok, _ := s.hasMeta(heldKey(ids[1])); !ok {
		t.Fatal("held index key not written by the migration")
	}
	// Releasing it now keeps the index right.
	if _, err := s.Update(ids[1], func(e *Envelope) error { e.Held = false; return nil }); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.hasMeta(heldKey(ids[1])); ok {
		t.Fatal("held index key left after release")
	}
}

// dropSavedCounters makes a closed spool look like one after a crash (or
// written by an older binary): no counters saved by Close.
func dropSavedCounters(t *testing.T, dir string) {
	t.Helper()
	db, err := badger.Open(badgerOptions(dir, slog.New(slog.DiscardHandler), false))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Delete(metaCounters) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCountersSavedByCloseOrRecounted: a clean Close saves the counters
// and the next open takes them without a scan (and clears them, so a crash
// after that cannot leave them stale); without them, open recounts.
func TestCountersSavedByCloseOrRecounted(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, nil)
	for i := 0; i < 7; i++ {
		e := env("a@x.org", "b@y.org")
		e.Held = i == 0
		if _, err := s.Put(e, make([]byte, 2000)); err != nil {
			t.Fatal(err)
		}
	}
	want := s.Stats()
	s.Close()

	s = openTest(t, dir, nil)
	if ok, _ := s.hasMeta(metaCounters); ok {
		t.Fatal("saved counters not cleared at open")
	}
	if st := s.Stats(); st.Messages != 7 || st.Held != 1 || st.Bytes != want.Bytes {
		t.Fatalf("from saved counters: %+v, want %+v", st, want)
	}
	id, err := s.Put(env("a@x.org", "b@y.org"), make([]byte, 100))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(id); err != nil {
		t.Fatal(err)
	}
	s.Close()

	dropSavedCounters(t, dir)
	s = openTest(t, dir, nil)
	defer s.Close()
	if st := s.Stats(); st.Messages != 7 || st.Held != 1 || st.Bytes < 7*2000 || st.Bytes > 7*2100 {
		t.Fatalf("recounted: %+v", st)
	}
}
