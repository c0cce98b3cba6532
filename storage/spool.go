// Package storage owns everything mxbox keeps on flash: the mail spool
// (envelopes, bodies and a schedule index ordered by next-attempt time) and a
// small blob store for other subsystems' state (resolver snapshot, OTA state).
// It is the only package that imports Badger.
//
// Key layout, one Badger keyspace:
//
//	e<id>                 envelope (JSON)
//	b<id><chunk:2>        body, in chunks of at most bodyChunk bytes
//	s<unix-nanos:8><id>   schedule index: empty value, ordered by next attempt
//	k<name>               blobs
//	H<id>                 held index: empty value, one per held message
//	m<name>               spool metadata: mheld-index (the H keys exist),
//	                      mcounters (counters saved by a clean Close)
//
// A message's envelope, body and schedule key are written in one transaction,
// and Put returns only after Badger has fsync'd it.
package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"golang.org/x/sys/unix"
)

const (
	prefixEnvelope = 'e'
	prefixBody     = 'b'
	prefixSchedule = 's'
	prefixBlob     = 'k'
	prefixHeld     = 'H'
	prefixMeta     = 'm'

	// bodyChunk bounds one Badger value. Badger refuses values larger than a
	// value-log file, and we keep those files small (see badgerOptions), so a
	// 25 MB message is stored as 25 values of 1 MiB in the same transaction.
	bodyChunk = 1 << 20
)

// ErrNotFound is returned for an unknown queue id or blob.
var ErrNotFound = errors.New("not found")

// Options tune the spool; zero values pick the defaults.
type Options struct {
	Logger *slog.Logger
	Now    func() time.Time
	// GCInterval is how often value-log GC runs to free flash (default 1 min).
	GCInterval time.Duration
	// ReadOnly opens the spool for inspection while no daemon runs.
	ReadOnly bool
	// NoSync skips fsync. Only for tests and benchmarks that measure
	// something else; the daemon never sets it.
	NoSync bool
}

// Spool is the durable mail queue.
type Spool struct {
	db       *badger.DB
	dir      string
	log      *slog.Logger
	now      func() time.Time
	ids      *idGen
	walked   atomic.Int64 // envelopes read by Walk, for trimming mappings during big walks
	count    atomic.Int64
	bytes    atomic.Int64
	held     atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup
	closed   atomic.Bool
	readOnly bool

	// Writes go through one committer (see commit.go).
	ops           chan *commitOp
	commitMu      sync.RWMutex
	commitClosed  bool
	stopCommit    chan struct{}
	committerDone chan struct{}

	// schedMu guards schedLow, a lower bound of the live schedule keys, and
	// schedGen, bumped by every schedule-key write. Due and NextDue seek
	// from schedLow instead of the index's start: delivered and rescheduled
	// messages leave tombstones at the head of the index, and walking them
	// on every scan made each scan cost O(messages handled since the last
	// compaction).
	schedMu  sync.Mutex
	schedLow []byte
	schedGen uint64
}

// badgerOptions are chosen for an ARM board with 256 MB of RAM and the spool
// on flash; Badger's defaults (5 x 64 MB memtables, 256 MB block cache, 1 GB
// value-log files) would take the whole board.
func badgerOptions(dir string, log *slog.Logger, readOnly bool) badger.Options {
	o := badger.DefaultOptions(dir).
		// Every commit is fsync'd before Put returns: a 250 must survive a power cut.
		// The committer (commit.go) puts concurrent writes into one
		// transaction, so they share one value-log sync and one WAL sync.
		WithSyncWrites(true).
		// Two 4 MB memtables: the skiplist arena is anonymous RAM, the WAL
		// beside it is an mmap'd file, so each costs ~2x its size when busy.
		// Envelopes and index keys are small; 4 MB holds thousands.
		WithMemTableSize(4 << 20).
		WithNumMemtables(2).
		// Bodies (> 1 KB) go to the value log, written once; envelopes and
		// schedule keys live in the LSM. Measured: moving envelopes to the
		// value log too (threshold 64) cut the LSM ~3x, but then a quiet box
		// rarely compacts, Badger gets no discard statistics and value-log
		// GC stopped freeing flash (TestDeliveredMailFreesFlash).
		WithValueThreshold(1 << 10).
		// 16 MB value-log files (Badger maps 2x that while writing): small
		// enough for RSS and for GC to reclaim flash in small steps.
		WithValueLogFileSize(16 << 20).
		// Small SSTs and a small base level suit a spool that is mostly
		// empty: a 4 MB memtable flush is one table.
		WithBaseTableSize(2 << 20).
		WithBaseLevelSize(8 << 20).
		WithNumLevelZeroTables(3).
		WithNumLevelZeroTablesStall(8).
		// Two compactors: the minimum Badger allows besides zero, one core's
		// worth of background work on a two-core board.
		WithNumCompactors(2).
		// Bodies are mail (often already compressed attachments) and ARM
		// cores are slow: no compression, which also lets the block cache
		// stay small.
		WithCompression(options.None).
		WithBlockCacheSize(4 << 20).
		WithIndexCacheSize(2 << 20).
		WithNumGoroutines(2).
		WithMetricsEnabled(false).
		WithDetectConflicts(true).
		WithReadOnly(readOnly).
		WithLogger(badgerLogger{log})
	// Every level's tables stay 2 MB (no With method for this one): a table
	// builder holds its whole table in RAM (2x its size preallocated) and a
	// compaction runs up to 8+ builders at once, so the default x2 per level
	// (16-32 MB tables at L3-L4 with a deep queue) made anonymous RSS spike.
	o.TableSizeMultiplier = 1
	return o
}

// Headroom is the flash Badger may need beyond what statfs shows as used:
// sparse, mmap'd value-log and memtable files fill in as they are written,
// and a write into a mapping on a full filesystem kills the process with
// SIGBUS instead of returning ENOSPC. The SMTP space guard adds this to the
// reserve so that never happens.
const Headroom = 2*(16<<20) + 2*2*(4<<20) + 4*(2<<20)

// Open opens (creating if needed) the spool in dir.
func Open(dir string, o Options) (*Spool, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.GCInterval == 0 {
		o.GCInterval = time.Minute
	}
	if !o.ReadOnly {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create spool dir %s: %w", dir, err)
		}
	}
	bo := badgerOptions(dir, o.Logger, o.ReadOnly)
	if o.NoSync {
		bo = bo.WithSyncWrites(false)
	}
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", dir, err)
	}
	s := &Spool{db: db, dir: dir, readOnly: o.ReadOnly, log: o.Logger, now: o.Now, ids: newIDGen(), stop: make(chan struct{}),
		ops: make(chan *commitOp, maxGroupOps), stopCommit: make(chan struct{}), committerDone: make(chan struct{}),
		schedLow: []byte{prefixSchedule}}
	if err := s.loadCounters(o.ReadOnly); err != nil {
		db.Close()
		return nil, err
	}
	go s.committer()
	if !o.ReadOnly {
		s.wg.Add(1)
		go s.gcLoop(o.GCInterval)
	}
	return s, nil
}

// Close stops background work and closes Badger cleanly.
func (s *Spool) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(s.stop)
	s.wg.Wait()
	s.commitMu.Lock()
	s.commitClosed = true
	s.commitMu.Unlock()
	close(s.stopCommit)
	<-s.committerDone
	if !s.readOnly {
		if err := s.saveCounters(); err != nil {
			s.log.Warn("save spool counters; the next open recounts", "err", err)
		}
	}
	return s.db.Close()
}

// Dir is the spool directory.
func (s *Spool) Dir() string { return s.dir }

// FreeBytes is the space available to mxbox on the spool's filesystem.
func (s *Spool) FreeBytes() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(s.dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", s.dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// NewID returns a fresh queue id, for callers that need it before Put (the
// Received header names it).
func (s *Spool) NewID() string { return s.ids.next(s.now()) }

func envKey(id string) []byte { return append([]byte{prefixEnvelope}, id...) }

func heldKey(id string) []byte { return append([]byte{prefixHeld}, id...) }

// metaHeldIndex marks a spool whose held messages all have an H key, so
// opening it counts them without reading any envelope.
var metaHeldIndex = []byte("mheld-index")

func bodyKey(id string, chunk int) []byte {
	k := make([]byte, 0, 1+len(id)+2)
	k = append(k, prefixBody)
	k = append(k, id...)
	return binary.BigEndian.AppendUint16(k, uint16(chunk))
}

func schedKey(t time.Time, id string) []byte {
	k := make([]byte, 0, 9+len(id))
	k = append(k, prefixSchedule)
	ns := t.UnixNano()
	if ns < 0 {
		ns = 0
	}
	k = binary.BigEndian.AppendUint64(k, uint64(ns))
	return append(k, id...)
}

// Put stores a new message and returns its queue id once it is on flash.
// env.ID, Received and NextAttempt are filled in when zero; the message is
// due at once unless NextAttempt says otherwise.
func (s *Spool) Put(env *Envelope, body []byte) (string, error) {
	if len(env.Recipients) == 0 {
		return "", errors.New("spool put: no recipients")
	}
	now := s.now()
	if env.Received.IsZero() {
		env.Received = now
	}
	if env.NextAttempt.IsZero() {
		env.NextAttempt = now
	}
	env.Size = int64(len(body))
	env.Chunks = (len(body) + bodyChunk - 1) / bodyChunk
	for attempt := 0; ; attempt++ {
		if env.ID == "" || attempt > 0 {
			env.ID = s.ids.next(now)
		}
		var sched []byte
		if !env.Held {
			sched = schedKey(env.NextAttempt, env.ID)
		}
		enc, err := json.Marshal(env)
		if err != nil {
			return "", fmt.Errorf("spool put: %w", err)
		}
		err = s.write(func(txn *badger.Txn) error {
			if _, err := txn.Get(envKey(env.ID)); err == nil {
				return errIDTaken
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
			if err := txn.Set(envKey(env.ID), enc); err != nil {
				return err
			}
			for i := 0; i < env.Chunks; i++ {
				end := min((i+1)*bodyChunk, len(body))
				if err := txn.Set(bodyKey(env.ID, i), body[i*bodyChunk:end]); err != nil {
					return err
				}
			}
			if sched == nil {
				return txn.Set(heldKey(env.ID), nil)
			}
			return txn.Set(sched, nil)
		}, func() { s.lowerSched(sched) })
		if errors.Is(err, errIDTaken) && attempt < 5 {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("spool put: %w", err)
		}
		s.count.Add(1)
		s.bytes.Add(env.Size)
		if env.Held {
			s.held.Add(1)
		}
		return env.ID, nil
	}
}

var errIDTaken = errors.New("queue id already in use")

// Get returns a message's envelope and body.
func (s *Spool) Get(id string) (*Envelope, []byte, error) {
	var env *Envelope
	var body []byte
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		if env, err = getEnvelope(txn, id); err != nil {
			return err
		}
		body = make([]byte, 0, env.Size)
		for i := 0; i < env.Chunks; i++ {
			item, err := txn.Get(bodyKey(id, i))
			if err != nil {
				return fmt.Errorf("queue id %s: body chunk %d: %w", id, i, err)
			}
			if err := item.Value(func(v []byte) error { body = append(body, v...); return nil }); err != nil {
				return fmt.Errorf("queue id %s: body chunk %d: %w", id, i, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return env, body, nil
}

// Envelope returns a message's envelope without reading its body.
func (s *Spool) Envelope(id string) (*Envelope, error) {
	var env *Envelope
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		env, err = getEnvelope(txn, id)
		return err
	})
	return env, err
}

func getEnvelope(txn *badger.Txn, id string) (*Envelope, error) {
	item, err := txn.Get(envKey(id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("queue id %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("queue id %s: %w", id, err)
	}
	env := &Envelope{}
	if err := item.Value(func(v []byte) error { return json.Unmarshal(v, env) }); err != nil {
		return nil, fmt.Errorf("queue id %s: decode envelope: %w", id, err)
	}
	return env, nil
}

// Due is one schedule-index entry.
type Due struct {
	ID   string
	When time.Time
}

// Due returns up to limit messages whose next attempt is at or before now,
// earliest first. It reads only the schedule index, never the whole queue.
func (s *Spool) Due(now time.Time, limit int) ([]Due, error) {
	var out []Due
	end := schedKey(now, "")
	low, gen := s.schedStart()
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixSchedule}})
		defer it.Close()
		it.Seek(low)
		s.raiseSched(it, gen)
		for ; it.Valid() && len(out) < limit; it.Next() {
			k := it.Item().Key()
			if bytes.Compare(k[:9], end[:9]) > 0 {
				break
			}
			out = append(out, Due{ID: string(k[9:]), When: time.Unix(0, int64(binary.BigEndian.Uint64(k[1:9])))})
		}
		return nil
	})
	return out, err
}

// NextDue returns the earliest scheduled attempt, or false when nothing is scheduled.
func (s *Spool) NextDue() (time.Time, bool, error) {
	var t time.Time
	var ok bool
	low, gen := s.schedStart()
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixSchedule}})
		defer it.Close()
		it.Seek(low)
		s.raiseSched(it, gen)
		if it.Valid() {
			k := it.Item().Key()
			t, ok = time.Unix(0, int64(binary.BigEndian.Uint64(k[1:9]))), true
		}
		return nil
	})
	return t, ok, err
}

// schedStart returns where a schedule scan may start and the generation
// to pass to raiseSched. Read it before opening the scan's transaction.
func (s *Spool) schedStart() ([]byte, uint64) {
	s.schedMu.Lock()
	defer s.schedMu.Unlock()
	return s.schedLow, s.schedGen
}

// raiseSched moves the bound up to the first live key a scan found (or past
// the index when there is none), unless a schedule key was written since
// the scan read the bound: that key may be below what the scan saw.
func (s *Spool) raiseSched(it *badger.Iterator, gen uint64) {
	first := []byte{prefixSchedule + 1}
	if it.Valid() {
		first = it.Item().KeyCopy(nil)
	}
	s.schedMu.Lock()
	if s.schedGen == gen && bytes.Compare(first, s.schedLow) > 0 {
		s.schedLow = first
	}
	s.schedMu.Unlock()
}

// lowerSched records a committed schedule key (nil: none written).
func (s *Spool) lowerSched(k []byte) {
	if k == nil {
		return
	}
	s.schedMu.Lock()
	s.schedGen++
	if bytes.Compare(k, s.schedLow) < 0 {
		s.schedLow = k
	}
	s.schedMu.Unlock()
}

// Update changes a message's envelope in one transaction: fn edits it (per
// recipient results, NextAttempt, Held, ...), and the schedule index follows
// NextAttempt and Held. fn may be called more than once (its group
// transaction can be retried alone); it runs on the spool's committer
// goroutine, so it must be quick and must not call the Spool.
func (s *Spool) Update(id string, fn func(env *Envelope) error) (*Envelope, error) {
	var out *Envelope
	var heldDelta int64
	var sched []byte
	for attempt := 0; ; attempt++ {
		err := s.write(func(txn *badger.Txn) error {
			heldDelta, sched, out = 0, nil, nil
			env, err := getEnvelope(txn, id)
			if err != nil {
				return err
			}
			oldNext, oldHeld := env.NextAttempt, env.Held
			if err := fn(env); err != nil {
				return err
			}
			env.ID = id
			enc, err := json.Marshal(env)
			if err != nil {
				return err
			}
			if err := txn.Set(envKey(id), enc); err != nil {
				return err
			}
			if oldHeld != env.Held || !oldNext.Equal(env.NextAttempt) {
				if !oldHeld {
					if err := txn.Delete(schedKey(oldNext, id)); err != nil {
						return err
					}
				}
				if !env.Held {
					sched = schedKey(env.NextAttempt, id)
					if err := txn.Set(sched, nil); err != nil {
						return err
					}
				}
			}
			switch {
			case env.Held && !oldHeld:
				heldDelta = 1
				if err := txn.Set(heldKey(id), nil); err != nil {
					return err
				}
			case !env.Held && oldHeld:
				heldDelta = -1
				if err := txn.Delete(heldKey(id)); err != nil {
					return err
				}
			}
			out = env
			return nil
		}, func() { s.lowerSched(sched) })
		if errors.Is(err, badger.ErrConflict) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("spool update %s: %w", id, err)
		}
		s.held.Add(heldDelta)
		return out, nil
	}
}

// Delete removes a message (delivered, bounced or deleted by the operator).
func (s *Spool) Delete(id string) error {
	for attempt := 0; ; attempt++ {
		var env *Envelope
		err := s.write(func(txn *badger.Txn) error {
			var err error
			if env, err = getEnvelope(txn, id); err != nil {
				return err
			}
			if err := txn.Delete(envKey(id)); err != nil {
				return err
			}
			for i := 0; i < env.Chunks; i++ {
				if err := txn.Delete(bodyKey(id, i)); err != nil {
					return err
				}
			}
			if !env.Held {
				return txn.Delete(schedKey(env.NextAttempt, id))
			}
			return txn.Delete(heldKey(id))
		}, nil)
		if errors.Is(err, badger.ErrConflict) && attempt < 10 {
			continue
		}
		if err != nil {
			return fmt.Errorf("spool delete %s: %w", id, err)
		}
		s.count.Add(-1)
		s.bytes.Add(-env.Size)
		if env.Held {
			s.held.Add(-1)
		}
		return nil
	}
}

// Walk calls fn for each envelope in id (arrival) order, starting after
// the id `after` ("" = from the start), until fn returns false. It is the
// paged iteration the admin tools use: remember the last id and call again.
func (s *Spool) Walk(after string, fn func(env *Envelope) bool) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixEnvelope}, PrefetchValues: false})
		defer it.Close()
		start := envKey(after)
		for it.Seek(start); it.Valid(); it.Next() {
			item := it.Item()
			if after != "" && bytes.Equal(item.Key(), start) {
				continue
			}
			env := &Envelope{}
			if err := item.Value(func(v []byte) error { return json.Unmarshal(v, env) }); err != nil {
				return fmt.Errorf("decode envelope %s: %w", item.Key()[1:], err)
			}
			// A walk over a large queue streams the whole LSM through
			// Badger's mappings faster than the daemon's mapping watcher
			// looks; give the pages back as we go.
			if s.walked.Add(1)%2048 == 0 {
				trimIfResident(s.dir, walkTrimAbove)
			}
			if !fn(env) {
				return nil
			}
		}
		return nil
	})
}

// List returns up to limit envelopes after the id `after`; next is the id to
// pass for the following page, "" at the end.
func (s *Spool) List(after string, limit int) (envs []*Envelope, next string, err error) {
	err = s.Walk(after, func(env *Envelope) bool {
		if len(envs) == limit {
			next = envs[len(envs)-1].ID
			return false
		}
		envs = append(envs, env)
		return true
	})
	return envs, next, err
}

// Stats is a cheap snapshot of the queue.
type Stats struct {
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
	Held     int64 `json:"held"`
	LSMBytes int64 `json:"lsm_bytes"`
	VlogSize int64 `json:"vlog_bytes"`
}

// Stats returns counters kept in memory (no scan).
func (s *Spool) Stats() Stats {
	lsm, vlog := s.db.Size()
	return Stats{Messages: s.count.Load(), Bytes: s.bytes.Load(), Held: s.held.Load(), LSMBytes: lsm, VlogSize: vlog}
}

// metaCounters holds count, bytes and held (3 x int64) as of a clean Close.
var metaCounters = []byte("mcounters")

// loadCounters sets the in-memory counters at open. After a clean Close
// they are read from mcounters and the key is deleted (durably) before any
// write, so a crash, or a run of an older binary that does not maintain
// it (an OTA rollback), leaves no stale copy: the next open recounts.
// Recounting 1,000,000 messages reads the whole LSM through Badger's
// mmaps: ~1 s, and ~300 MB of file-backed RSS, which set the process peak.
func (s *Spool) loadCounters(readOnly bool) error {
	v, err := s.value(metaCounters)
	if err != nil {
		return fmt.Errorf("open spool: read counters: %w", err)
	}
	if len(v) != 24 {
		return s.recount(readOnly)
	}
	if !readOnly {
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(metaCounters) }); err != nil {
			return fmt.Errorf("open spool: clear saved counters: %w", err)
		}
	}
	s.count.Store(int64(binary.BigEndian.Uint64(v[0:])))
	s.bytes.Store(int64(binary.BigEndian.Uint64(v[8:])))
	s.held.Store(int64(binary.BigEndian.Uint64(v[16:])))
	return nil
}

// saveCounters writes the counters for the next open; called by Close
// after the last write.
func (s *Spool) saveCounters() error {
	v := make([]byte, 0, 24)
	v = binary.BigEndian.AppendUint64(v, uint64(s.count.Load()))
	v = binary.BigEndian.AppendUint64(v, uint64(s.bytes.Load()))
	v = binary.BigEndian.AppendUint64(v, uint64(s.held.Load()))
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(metaCounters, v) })
}

// recount rebuilds the in-memory counters at open from keys only: body
// chunks (their sizes come from the value pointers), envelope keys and the
// held index. No envelope is read: with 1,000,000 queued, reading them all
// from the value log took minutes of random reads and pulled gigabytes
// through the page cache.
func (s *Spool) recount(readOnly bool) error {
	var count, size, held int64
	countKeys := func(prefix byte, fn func(it *badger.Iterator)) error {
		return s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
			defer it.Close()
			for it.Seek([]byte{prefix}); it.Valid(); it.Next() {
				fn(it)
			}
			return nil
		})
	}
	if err := countKeys(prefixBody, func(it *badger.Iterator) { size += it.Item().ValueSize() }); err != nil {
		return fmt.Errorf("open spool: count bodies: %w", err)
	}
	if err := countKeys(prefixEnvelope, func(*badger.Iterator) { count++ }); err != nil {
		return fmt.Errorf("open spool: count envelopes: %w", err)
	}
	indexed, err := s.hasMeta(metaHeldIndex)
	if err != nil {
		return fmt.Errorf("open spool: %w", err)
	}
	if indexed {
		err = countKeys(prefixHeld, func(*badger.Iterator) { held++ })
	} else {
		held, err = s.migrateHeldIndex(count > 0, readOnly)
	}
	if err != nil {
		return fmt.Errorf("open spool: count held: %w", err)
	}
	s.count.Store(count)
	s.bytes.Store(size)
	s.held.Store(held)
	return nil
}

func (s *Spool) hasMeta(key []byte) (bool, error) {
	var ok bool
	err := s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(key)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		ok = err == nil
		return err
	})
	return ok, err
}

// migrateHeldIndex runs once on a spool written before the held index: it
// reads every envelope, writes an H key for each held one and the marker,
// in one transaction (held messages are few). Read-only, it only counts.
func (s *Spool) migrateHeldIndex(any, readOnly bool) (int64, error) {
	var heldIDs []string
	if any {
		err := s.Walk("", func(env *Envelope) bool {
			if env.Held {
				heldIDs = append(heldIDs, env.ID)
			}
			return true
		})
		if err != nil {
			return 0, err
		}
	}
	if readOnly {
		return int64(len(heldIDs)), nil
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		for _, id := range heldIDs {
			if err := txn.Set(heldKey(id), nil); err != nil {
				return err
			}
		}
		return txn.Set(metaHeldIndex, []byte{1})
	})
	return int64(len(heldIDs)), err
}

// LoadBlob returns a named blob, or nil and no error when absent.
func (s *Spool) LoadBlob(name string) ([]byte, error) {
	out, err := s.value(append([]byte{prefixBlob}, name...))
	if err != nil {
		return nil, fmt.Errorf("load blob %s: %w", name, err)
	}
	return out, nil
}

// value reads one key's value; an absent key is nil and no error.
func (s *Spool) value(key []byte) ([]byte, error) {
	var out []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		out, err = item.ValueCopy(nil)
		return err
	})
	return out, err
}

// SaveBlob stores a named blob durably.
func (s *Spool) SaveBlob(name string, data []byte) error {
	err := s.write(func(txn *badger.Txn) error {
		return txn.Set(append([]byte{prefixBlob}, name...), data)
	}, nil)
	if err != nil {
		return fmt.Errorf("save blob %s: %w", name, err)
	}
	return nil
}

// gcLoop reclaims value-log space left by delivered mail.
func (s *Spool) gcLoop(every time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.RunGC()
		}
	}
}

// RunGC rewrites value-log files that are at least half garbage, until none is.
func (s *Spool) RunGC() {
	for i := 0; i < 16; i++ {
		if err := s.db.RunValueLogGC(0.5); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				s.log.Warn("spool value-log GC", "err", err)
			}
			return
		}
	}
}

// badgerLogger sends Badger's chatter to slog; info is debug noise for us.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error("badger: " + trim(fmt.Sprintf(f, a...))) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn("badger: " + trim(fmt.Sprintf(f, a...))) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug("badger: " + trim(fmt.Sprintf(f, a...))) }
func (b badgerLogger) Debugf(f string, a ...any)   {}

func trim(s string) string { return string(bytes.TrimRight([]byte(s), "\n")) }
