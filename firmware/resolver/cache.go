package resolver

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// kind classifies a cached answer; the API and the stale rules care.
type kind uint8

const (
	kindPositive kind = iota + 1
	kindNXDomain
	kindNoData
	kindServFail // cached a few seconds only, never served stale
)

// entry is one cached answer: the packed reply (ID 0, lower-case question,
// TTLs as clamped at store time, no OPT). It is kept small on purpose (the
// budget is 50,000 names in well under 40 MB): times are unix nanoseconds,
// the owner name and RR offsets are re-read from msg when needed, and
// everything but the LRU links and the atomics is immutable once stored.
type entry struct {
	key        string
	msg        []byte
	stored     int64        // unix nanos
	expires    int64        // stored + smallest TTL
	staleUntil int64        // expires + max_stale (== expires when not stale-servable)
	lastFail   atomic.Int64 // unix nanos of the last failed refresh: retry ≤ every 30 s
	prev, next *entry
	qEnd       uint16 // end of the question in msg
	qtype      uint16
	kind       kind
	rcode      uint8
	static     bool
	prefetched atomic.Bool
}

// entryOverhead approximates the Go memory of an entry beyond key and msg
// (struct, map slot, allocation rounding), calibrated by
// TestMemoryFor50kNames, so cache_bytes bounds real memory.
const entryOverhead = 176

func (e *entry) size() int { return entryOverhead + len(e.key) + cap(e.msg) }

func (e *entry) ttl() time.Duration { return time.Duration(e.expires - e.stored) }

func (e *entry) fresh(now time.Time) bool { return now.UnixNano() < e.expires }

// inLastTenth reports whether now is in the last 10% of the TTL (prefetch).
func (e *entry) inLastTenth(now time.Time) bool {
	return now.UnixNano() >= e.expires-int64(e.ttl()/10)
}

func (e *entry) dead(now time.Time) bool { return now.UnixNano() > e.staleUntil }

// name is the owner name (lower-case FQDN) read back from the question.
func (e *entry) name() string {
	n, _, err := dns.UnpackDomainName(e.msg, headerLen)
	if err != nil {
		return "."
	}
	return n
}

// cache is a byte-bounded LRU split into shards so the two cores (and many
// socket readers) do not serialize on one mutex.
type cache struct {
	seed     maphash.Seed
	shards   [16]shard
	isPinned func(name string) bool
	changed  atomic.Uint64 // bumped on every store: snapshot only when dirty
}

type shard struct {
	mu       sync.Mutex
	m        map[string]*entry
	head     entry // sentinel: head.next is most recent
	bytes    int64
	maxBytes int64
	entries  int
}

func newCache(maxBytes int64, isPinned func(string) bool) *cache {
	c := &cache{seed: maphash.MakeSeed(), isPinned: isPinned}
	for i := range c.shards {
		s := &c.shards[i]
		s.m = make(map[string]*entry)
		s.head.next, s.head.prev = &s.head, &s.head
		s.maxBytes = maxBytes / int64(len(c.shards))
	}
	return c
}

func (c *cache) shardFor(key []byte) *shard {
	return &c.shards[maphash.Bytes(c.seed, key)%uint64(len(c.shards))]
}

// get returns the entry for key and marks it recently used. Entries past
// their stale window are dropped here lazily.
func (c *cache) get(key []byte, now time.Time) *entry {
	s := c.shardFor(key)
	s.mu.Lock()
	e := s.m[string(key)]
	if e != nil {
		if e.dead(now) {
			s.remove(e)
			e = nil
		} else {
			s.unlink(e)
			s.pushFront(e)
		}
	}
	s.mu.Unlock()
	return e
}

// peek is get without touching recency or expiry.
func (c *cache) peek(key string) *entry {
	s := c.shardFor([]byte(key))
	s.mu.Lock()
	e := s.m[key]
	s.mu.Unlock()
	return e
}

// put stores e, replacing any entry under the same key, then evicts least
// recently used entries until the shard fits. Pinned names are skipped: mail
// is waiting for them.
func (c *cache) put(e *entry) {
	s := c.shardFor([]byte(e.key))
	s.mu.Lock()
	if old := s.m[e.key]; old != nil {
		s.remove(old)
	}
	s.m[e.key] = e
	s.pushFront(e)
	s.bytes += int64(e.size())
	s.entries++
	for budget := s.entries; s.bytes > s.maxBytes && budget > 0; budget-- {
		victim := s.head.prev
		if victim == e {
			break
		}
		if c.isPinned != nil && c.isPinned(victim.name()) {
			s.unlink(victim)
			s.pushFront(victim)
			continue
		}
		s.remove(victim)
	}
	s.mu.Unlock()
	c.changed.Add(1)
}

func (s *shard) remove(e *entry) {
	s.unlink(e)
	delete(s.m, e.key)
	s.bytes -= int64(e.size())
	s.entries--
}

func (s *shard) unlink(e *entry) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

func (s *shard) pushFront(e *entry) {
	e.prev = &s.head
	e.next = s.head.next
	s.head.next.prev = e
	s.head.next = e
}

// each calls fn for every entry, oldest first per shard, under the shard lock.
func (c *cache) each(fn func(e *entry)) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for e := s.head.prev; e != &s.head; e = e.prev {
			fn(e)
		}
		s.mu.Unlock()
	}
}

func (c *cache) usage() (entries int, bytes int64) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		entries += s.entries
		bytes += s.bytes
		s.mu.Unlock()
	}
	return entries, bytes
}
