package storage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"
)

func openTest(t *testing.T, dir string, now func() time.Time) *Spool {
	t.Helper()
	s, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func env(from string, rcpts ...string) *Envelope {
	e := &Envelope{From: from}
	for _, r := range rcpts {
		e.Recipients = append(e.Recipients, Recipient{Addr: r})
	}
	return e
}

func TestPutGetRoundTripIncludingMultiChunkBody(t *testing.T) {
	s := openTest(t, t.TempDir(), nil)
	defer s.Close()
	for _, size := range []int{0, 10, bodyChunk, 3*bodyChunk + 17} {
		body := bytes.Repeat([]byte("x"), size)
		for i := range body {
			body[i] = byte(i * 7)
		}
		e := env("a@example.org", "b@example.com", "c@example.com")
		e.Recipients[0].Notify = []string{"FAILURE"}
		e.Ret, e.EnvID, e.ClientIP = "HDRS", "env-1", "192.0.2.1"
		id, err := s.Put(e, body)
		if err != nil {
			t.Fatal(err)
		}
		got, gotBody, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(gotBody, body) {
			t.Fatalf("size %d: body differs (got %d bytes)", size, len(gotBody))
		}
		if got.From != "a@example.org" || len(got.Recipients) != 2 || got.Recipients[0].Notify[0] != "FAILURE" || got.Ret != "HDRS" || got.EnvID != "env-1" || got.ClientIP != "192.0.2.1" || got.Size != int64(size) {
			t.Fatalf("envelope differs: %+v", got)
		}
	}
	if st := s.Stats(); st.Messages != 4 {
		t.Fatalf("stats messages = %d, want 4", st.Messages)
	}
}

func TestIDsSortByTimeAndAreUnique(t *testing.T) {
	g := newIDGen()
	base := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	var ids []string
	seen := map[string]bool{}
	for i := 0; i < 5000; i++ {
		id := g.next(base.Add(time.Duration(i/10) * time.Millisecond))
		if seen[id] || !ValidID(id) {
			t.Fatalf("id %q duplicate or invalid", id)
		}
		seen[id] = true
		ids = append(ids, id)
	}
	if !sort.StringsAreSorted(ids) {
		t.Fatal("ids are not in creation order")
	}
	if ts, ok := IDTime(ids[len(ids)-1]); !ok || ts.Sub(base) != 499*time.Millisecond {
		t.Fatalf("IDTime = %v, want base+499ms", ts)
	}
	// The clock going backwards must not produce an older or equal id.
	back := g.next(base.Add(-time.Hour))
	if back <= ids[len(ids)-1] {
		t.Fatalf("id after clock step back %q <= previous %q", back, ids[len(ids)-1])
	}
}

func TestDueReturnsOnlyMessagesDueInScheduleOrder(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	s := openTest(t, t.TempDir(), func() time.Time { return now })
	defer s.Close()
	var ids []string
	for i, off := range []time.Duration{time.Minute, -time.Minute, 0, time.Hour, -time.Hour} {
		e := env("a@x.org", fmt.Sprintf("r%d@y.org", i))
		e.NextAttempt = now.Add(off)
		id, err := s.Put(e, []byte("hi"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	due, err := s.Due(now, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{ids[4], ids[1], ids[2]}
	if len(due) != 3 {
		t.Fatalf("due = %v, want %v", due, want)
	}
	for i := range want {
		if due[i].ID != want[i] {
			t.Fatalf("due[%d] = %s, want %s", i, due[i].ID, want[i])
		}
	}
	if d, _ := s.Due(now, 2); len(d) != 2 {
		t.Fatalf("limit ignored: %d", len(d))
	}
	next, ok, _ := s.NextDue()
	if !ok || !next.Equal(now.Add(-time.Hour)) {
		t.Fatalf("NextDue = %v %v", next, ok)
	}
}

func TestUpdateMovesScheduleHoldAndRelease(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	s := openTest(t, t.TempDir(), func() time.Time { return now })
	defer s.Close()
	id, err := s.Put(env("a@x.org", "b@y.org", "c@y.org"), []byte("body"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Update(id, func(e *Envelope) error {
		e.Recipients[0].State = RcptDelivered
		e.Recipients[1].LastError = "451 try later"
		e.NextAttempt = now.Add(10 * time.Minute)
		e.Attempts++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Due(now, 10); len(d) != 0 {
		t.Fatalf("rescheduled message still due now: %v", d)
	}
	if d, _ := s.Due(now.Add(10*time.Minute), 10); len(d) != 1 || d[0].ID != id {
		t.Fatalf("rescheduled message not due later: %v", d)
	}
	e, _ := s.Envelope(id)
	if e.Recipients[0].State != RcptDelivered || len(e.Pending()) != 1 || e.Attempts != 1 {
		t.Fatalf("per-recipient state lost: %+v", e)
	}
	if _, err := s.Update(id, func(e *Envelope) error { e.Held = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Due(now.Add(time.Hour), 10); len(d) != 0 || s.Stats().Held != 1 {
		t.Fatalf("held message still scheduled: %v held=%d", d, s.Stats().Held)
	}
	if _, err := s.Update(id, func(e *Envelope) error { e.Held = false; e.NextAttempt = now; return nil }); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Due(now, 10); len(d) != 1 || s.Stats().Held != 0 {
		t.Fatalf("released message not due: %v", d)
	}
	if err := s.Delete(id); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted message: err = %v", err)
	}
	if d, _ := s.Due(now.Add(time.Hour), 10); len(d) != 0 {
		t.Fatalf("deleted message still scheduled: %v", d)
	}
	if st := s.Stats(); st.Messages != 0 || st.Bytes != 0 {
		t.Fatalf("stats after delete: %+v", st)
	}
}

func TestListPagesAndCountersSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, nil)
	var ids []string
	for i := 0; i < 25; i++ {
		id, err := s.Put(env("a@x.org", "b@y.org"), []byte("0123456789"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if _, err := s.Update(ids[3], func(e *Envelope) error { e.Held = true; return nil }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTest(t, dir, nil)
	defer s.Close()
	if st := s.Stats(); st.Messages != 25 || st.Bytes != 250 || st.Held != 1 {
		t.Fatalf("stats after reopen: %+v", st)
	}
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		envs, next, err := s.List(after, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range envs {
			got = append(got, e.ID)
		}
		if next == "" {
			break
		}
		after = next
		if pages > 5 {
			t.Fatal("paging does not end")
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("paged list = %v, want %v", got, ids)
	}
}

func TestConcurrentPutsAllDurable(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	bodies := map[string][]byte{}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				b := []byte(fmt.Sprintf("worker %d message %d", w, i))
				id, err := s.Put(env("a@x.org", "b@y.org"), b)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				bodies[id] = b
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	s.Close()
	s = openTest(t, dir, nil)
	defer s.Close()
	for id, b := range bodies {
		_, got, err := s.Get(id)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s: %v %q", id, err, got)
		}
	}
	if len(bodies) != 400 {
		t.Fatalf("%d messages", len(bodies))
	}
}

func TestBlobs(t *testing.T) {
	s := openTest(t, t.TempDir(), nil)
	defer s.Close()
	if b, err := s.LoadBlob("dns"); b != nil || err != nil {
		t.Fatalf("absent blob: %q %v", b, err)
	}
	if err := s.SaveBlob("dns", []byte("snap")); err != nil {
		t.Fatal(err)
	}
	if b, _ := s.LoadBlob("dns"); string(b) != "snap" {
		t.Fatalf("blob = %q", b)
	}
}
