package resolver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/mxbox/mxbox/firmware/config"
)

const (
	servfailTTL    = 5 * time.Second         // "SERVFAIL cached only briefly"
	staleRetry     = 30 * time.Second        // RFC 8767: refresh a stale name at most this often
	staleWait      = 1800 * time.Millisecond // a stub gives up around 2 s: answer stale before that
	noSOANegTTL    = 5 * time.Second         // negative answer without SOA: RFC 2308 says don't cache; barely do
	maxBackground  = 64                      // concurrent background refreshes/prefetches
	staticTTL      = 300
	prefetchMinTTL = 10 * time.Second // prefetching a 5 s record is pointless churn
)

// SnapshotStore keeps the cache snapshot on flash (the storage package's
// blob store in production, a map in tests).
type SnapshotStore interface {
	LoadBlob(name string) ([]byte, error) // nil, nil when absent
	SaveBlob(name string, data []byte) error
}

// Options are the resolver's dependencies; only Logger is really needed.
type Options struct {
	Logger        *slog.Logger
	Now           func() time.Time // nil = time.Now
	Store         SnapshotStore    // nil = no persistence
	RootHints     []string         // "ip" or "ip:port"; nil = the real root servers
	RelayPrefixes []netip.Prefix   // smtp.relay_networks: allowed clients
	// ServerPort is the port of name servers learned from referrals during
	// recursion; 0 means 53. Tests set it to run a fake hierarchy on loopback.
	ServerPort int
}

// Resolver is the caching resolver: cache, upstreams, listeners and API.
type Resolver struct {
	cfg       config.DNS
	log       *slog.Logger
	now       func() time.Time
	store     SnapshotStore
	roots     []string
	port      string
	acl       []netip.Prefix
	loopback  bool
	limiter   *limiter
	cache     *cache
	static    map[string]*entry
	fwd       []*forwarder
	fwdCount  atomic.Uint64
	minTTL    uint32
	maxTTL    uint32
	maxNegTTL uint32
	maxStale  time.Duration
	timeout   time.Duration
	tcpIdle   time.Duration // tests shorten it

	flightMu sync.Mutex
	flights  map[string]*flight
	bgSem    chan struct{}

	pinMu    sync.Mutex
	pinNames []string
	pins     atomic.Pointer[map[string]struct{}]

	srv        *server
	done       chan struct{}
	wg         sync.WaitGroup
	closeOnce  sync.Once
	lastSaved  atomic.Uint64
	stats      counters
	snapshotMu sync.Mutex
}

type counters struct {
	queries, hits, misses, stale, prefetches, refused, rateLimited, dropped, servfails, recursions atomic.Uint64
}

// New builds a resolver from cfg; nothing touches the network until Start
// (and the Lookup methods work without Start, with an empty cache).
func New(cfg config.DNS, opts Options) (*Resolver, error) {
	r := &Resolver{
		cfg:      cfg,
		log:      opts.Logger,
		now:      opts.Now,
		store:    opts.Store,
		roots:    opts.RootHints,
		port:     "53",
		loopback: cfg.AllowLoopback,
		flights:  map[string]*flight{},
		bgSem:    make(chan struct{}, maxBackground),
		done:     make(chan struct{}),
		timeout:  cfg.QueryTimeout.D(),
		tcpIdle:  tcpIdleTimeout,
		maxStale: cfg.MaxStale.D(),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.timeout <= 0 {
		r.timeout = 4 * time.Second
	}
	if opts.ServerPort != 0 {
		r.port = fmt.Sprint(opts.ServerPort)
	}
	if r.roots == nil {
		r.roots = builtinRootHints
	}
	r.roots = append([]string(nil), r.roots...)
	for i, h := range r.roots {
		if _, err := netip.ParseAddr(h); err == nil {
			r.roots[i] = joinHostPort(h, "53")
		} else if _, err := netip.ParseAddrPort(h); err != nil {
			return nil, fmt.Errorf("resolver: root hint %q: want ip or ip:port", h)
		}
	}
	if !cfg.ServeStale {
		r.maxStale = 0
	}
	r.minTTL = uint32(cfg.MinTTL.D() / time.Second)
	r.maxTTL = uint32(cfg.MaxTTL.D() / time.Second)
	if r.maxTTL == 0 {
		r.maxTTL = 86400
	}
	r.maxNegTTL = uint32(cfg.MaxNegativeTTL.D() / time.Second)
	r.acl = append(r.acl, opts.RelayPrefixes...)
	for _, a := range cfg.Allow {
		p, err := config.ParsePrefix(a)
		if err != nil {
			return nil, fmt.Errorf("resolver: dns.allow %q: %v", a, err)
		}
		r.acl = append(r.acl, p)
	}
	if cfg.RateLimit > 0 {
		r.limiter = newLimiter(float64(cfg.RateLimit), float64(max(cfg.RateBurst, 1)), r.now)
	}
	for _, f := range cfg.Forwarders {
		r.fwd = append(r.fwd, &forwarder{addr: f})
	}
	empty := map[string]struct{}{}
	r.pins.Store(&empty)
	r.cache = newCache(int64(cfg.CacheBytes), r.isPinned)
	if err := r.buildStatic(cfg.Records); err != nil {
		return nil, err
	}
	return r, nil
}

func joinHostPort(h, p string) string {
	if strings.Contains(h, ":") {
		return "[" + h + "]:" + p
	}
	return h + ":" + p
}

// allowed is the ACL: loopback (unless narrowed), relay networks, dns.allow.
func (r *Resolver) allowed(a netip.Addr) bool {
	a = a.Unmap()
	if r.loopback && a.IsLoopback() {
		return true
	}
	for _, p := range r.acl {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// buildStatic turns [dns] records into entries. A name with static records
// answers NODATA for other types, so a pinned ISP relay never depends on DNS.
func (r *Resolver) buildStatic(recs []config.DNSRecord) error {
	r.static = map[string]*entry{}
	byName := map[string][]dns.RR{}
	var order []string
	for _, rec := range recs {
		name := dns.CanonicalName(rec.Name)
		rr, err := dns.NewRR(fmt.Sprintf("%s %d IN %s %s", name, staticTTL, strings.ToUpper(rec.Type), rec.Value))
		if err != nil || rr == nil {
			return fmt.Errorf("resolver: dns.records %s %s %q: %v", rec.Name, rec.Type, rec.Value, err)
		}
		if _, ok := byName[name]; !ok {
			order = append(order, name)
		}
		byName[name] = append(byName[name], rr)
	}
	now := r.now()
	for _, name := range order {
		rrs := byName[name]
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX, dns.TypeCNAME, dns.TypeTXT, dns.TypePTR, dns.TypeNS, dns.TypeSOA, dns.TypeSRV, dns.TypeHTTPS} {
			m := new(dns.Msg)
			m.SetQuestion(name, qtype)
			m.Response, m.Authoritative = true, true
			for _, rr := range rrs {
				if rr.Header().Rrtype == qtype || rr.Header().Rrtype == dns.TypeCNAME {
					m.Answer = append(m.Answer, rr)
				}
			}
			for _, do := range []bool{false, true} {
				key := string(appendKey(nil, mustWireName(name), qtype, dns.ClassINET, do))
				e, err := r.makeEntry(key, name, qtype, m, now)
				if err != nil {
					return fmt.Errorf("resolver: static %s: %v", name, err)
				}
				e.static = true
				e.staleUntil = 1 << 62
				e.expires = e.staleUntil
				r.static[key] = e
			}
		}
	}
	return nil
}

func mustWireName(name string) []byte {
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(name, buf, 0, nil, false)
	if err != nil {
		return []byte{0}
	}
	return buf[:n]
}

// makeEntry turns an upstream (or synthesized) reply into a cache entry:
// TTLs clamped, negative TTL from the SOA per RFC 2308, only the records a
// client needs kept, packed once.
func (r *Resolver) makeEntry(key, name string, qtype uint16, resp *dns.Msg, now time.Time) (*entry, error) {
	m := new(dns.Msg)
	m.Response = true
	m.Rcode = resp.Rcode
	m.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: dns.ClassINET}}
	e := &entry{key: key, qtype: qtype, stored: now.UnixNano(), rcode: uint8(resp.Rcode)}
	var ttl uint32
	switch {
	case resp.Rcode == dns.RcodeSuccess && len(resp.Answer) > 0:
		e.kind = kindPositive
		ttl = ^uint32(0)
		for _, rr := range resp.Answer {
			if rr.Header().Rrtype == dns.TypeOPT {
				continue
			}
			rr = dns.Copy(rr)
			h := rr.Header()
			h.Ttl = min(max(h.Ttl, r.minTTL), r.maxTTL)
			ttl = min(ttl, h.Ttl)
			m.Answer = append(m.Answer, rr)
		}
	case resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError:
		e.kind = kindNoData
		if resp.Rcode == dns.RcodeNameError {
			e.kind = kindNXDomain
		}
		m.Answer = copyRRs(resp.Answer) // a CNAME chain ending in NXDOMAIN
		ttl = uint32(noSOANegTTL / time.Second)
		for _, rr := range resp.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl = min(soa.Hdr.Ttl, soa.Minttl, r.maxNegTTL)
			}
		}
		for _, rr := range resp.Ns {
			switch rr.Header().Rrtype {
			case dns.TypeSOA, dns.TypeNSEC, dns.TypeNSEC3, dns.TypeRRSIG:
				rr = dns.Copy(rr)
				rr.Header().Ttl = ttl
				m.Ns = append(m.Ns, rr)
			}
		}
		for _, rr := range m.Answer {
			rr.Header().Ttl = min(rr.Header().Ttl, ttl)
		}
	default:
		return nil, fmt.Errorf("rcode %s is not cacheable", dns.RcodeToString[resp.Rcode])
	}
	if ttl == ^uint32(0) {
		ttl = 0
	}
	m.Compress = true
	packed, err := m.Pack()
	if err != nil {
		return nil, err
	}
	qEnd, err := walk(packed)
	if err != nil {
		return nil, err
	}
	e.qEnd = uint16(qEnd)
	e.msg = packed
	e.expires = e.stored + int64(ttl)*int64(time.Second)
	e.staleUntil = e.expires + int64(r.maxStale)
	return e, nil
}

func copyRRs(rrs []dns.RR) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		out = append(out, dns.Copy(rr))
	}
	return out
}

func servfailEntry(key, name string, qtype uint16, now time.Time) *entry {
	m := new(dns.Msg)
	m.Response = true
	m.Rcode = dns.RcodeServerFailure
	m.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: dns.ClassINET}}
	packed, _ := m.Pack()
	qEnd, _ := walk(packed)
	n := now.UnixNano()
	return &entry{key: key, qtype: qtype, kind: kindServFail, rcode: dns.RcodeServerFailure, qEnd: uint16(qEnd),
		msg: packed, stored: n, expires: n + int64(servfailTTL), staleUntil: n + int64(servfailTTL)}
}

// lookupCached answers from static records or a fresh cache entry; it
// triggers a prefetch when the entry is in the last 10% of its TTL.
func (r *Resolver) lookupCached(key []byte, now time.Time) *entry {
	if len(r.static) > 0 {
		if e := r.static[string(key)]; e != nil {
			return e
		}
	}
	e := r.cache.get(key, now)
	if e == nil || !e.fresh(now) {
		return nil
	}
	// Prefetch once per entry; a failed prefetch may be retried, but not
	// more often than a stale refresh would be (upstreams may be down).
	if e.kind != kindServFail && e.ttl() >= prefetchMinTTL && e.inLastTenth(now) &&
		now.UnixNano()-e.lastFail.Load() >= int64(staleRetry) && !e.prefetched.Swap(true) {
		r.stats.prefetches.Add(1)
		r.startFetch(e.key, e.name(), e.qtype, key[len(key)-1] == 1, false)
	}
	return e
}

// cachedStale returns a stale-servable entry whose refresh failed less
// than 30 s ago: the fast path answers it without queueing for a worker,
// which is what keeps an outage cheap.
func (r *Resolver) cachedStale(key []byte, now time.Time) *entry {
	if r.maxStale == 0 {
		return nil
	}
	e := r.cache.get(key, now)
	if e == nil || e.kind == kindServFail || now.Sub(time.Unix(0, e.lastFail.Load())) >= staleRetry {
		return nil
	}
	return e
}

// upstreamsDown reports that forwarders exist and all are in backoff, and
// recursion is off (its health is not tracked, so it is always worth a try).
func (r *Resolver) upstreamsDown(now time.Time) bool {
	if len(r.fwd) == 0 || r.cfg.Recursion {
		return false
	}
	for _, f := range r.fwd {
		f.mu.Lock()
		down := now.Before(f.downUntil)
		f.mu.Unlock()
		if !down {
			return false
		}
	}
	return true
}

// resolve is the whole pipeline for one question: static → fresh cache →
// stale rules → upstream (forwarders, then recursion). stale reports that e
// is expired data served under RFC 8767.
func (r *Resolver) resolve(ctx context.Context, name string, qtype uint16, do bool) (e *entry, stale bool, err error) {
	name = dns.CanonicalName(name)
	wire := mustWireName(name)
	key := appendKey(nil, wire, qtype, dns.ClassINET, do)
	now := r.now()
	if e := r.lookupCached(key, now); e != nil {
		r.stats.hits.Add(1)
		return e, false, nil
	}
	r.stats.misses.Add(1)
	old := r.cache.get(key, now)
	if old != nil && (old.kind == kindServFail || r.maxStale == 0) {
		old = nil
	}
	if old != nil && now.Sub(time.Unix(0, old.lastFail.Load())) < staleRetry {
		r.stats.stale.Add(1)
		return old, true, nil
	}
	if old != nil && r.upstreamsDown(now) {
		// Every forwarder is in backoff: waiting 1.8 s per name would only
		// delay the stale answer. Refresh in the background instead.
		r.startFetch(string(key), name, qtype, do, false)
		r.stats.stale.Add(1)
		return old, true, nil
	}
	ch := r.startFetch(string(key), name, qtype, do, true)
	var timer <-chan time.Time
	if old != nil {
		t := time.NewTimer(staleWait)
		defer t.Stop()
		timer = t.C
	}
	select {
	case res := <-ch:
		if res.err == nil {
			return res.e, false, nil
		}
		err = res.err
	case <-timer:
		err = &TempError{Name: name, Reason: "upstream slower than " + staleWait.String()}
	case <-ctx.Done():
		err = &TempError{Name: name, Reason: "deadline: " + ctx.Err().Error()}
	}
	if old != nil {
		r.stats.stale.Add(1)
		return old, true, nil
	}
	return nil, false, err
}

type fetchResult struct {
	e   *entry
	err error
}

// flight is one upstream fetch shared by every query for the same key.
type flight struct {
	done chan struct{}
	res  fetchResult
}

// startFetch refreshes key from upstream in the background (deduplicated
// per key) and returns a channel that yields the result. wait=false
// (prefetch, pinning) gives up instead of queueing when too many fetches run.
func (r *Resolver) startFetch(key, name string, qtype uint16, do bool, wait bool) <-chan fetchResult {
	out := make(chan fetchResult, 1)
	select {
	case <-r.done:
		out <- fetchResult{err: &TempError{Name: name, Reason: "resolver closed"}}
		return out
	default:
	}
	r.flightMu.Lock()
	f := r.flights[key]
	if f == nil {
		if !wait {
			select {
			case r.bgSem <- struct{}{}:
			default:
				r.flightMu.Unlock()
				out <- fetchResult{err: &TempError{Name: name, Reason: "busy"}}
				return out
			}
		}
		f = &flight{done: make(chan struct{})}
		r.flights[key] = f
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if !wait {
				defer func() { <-r.bgSem }()
			}
			f.res = r.fetch(key, name, qtype, do)
			r.flightMu.Lock()
			delete(r.flights, key)
			r.flightMu.Unlock()
			close(f.done)
		}()
	}
	r.flightMu.Unlock()
	go func() {
		<-f.done
		out <- f.res
	}()
	return out
}

// fetch asks upstream and stores the outcome. A failure never replaces a
// cached answer (it only delays the next refresh); without one, SERVFAIL is
// remembered for a few seconds so a dead name does not hammer upstreams.
func (r *Resolver) fetch(key, name string, qtype uint16, do bool) fetchResult {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	go func() {
		select {
		case <-r.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	resp, err := r.upstream(ctx, name, qtype, do)
	now := r.now()
	if err == nil {
		e, merr := r.makeEntry(key, name, qtype, resp, now)
		if merr == nil {
			r.cache.put(e)
			if qtype == dns.TypeMX {
				r.notePinnedMX(name)
			}
			return fetchResult{e: e}
		}
		err = merr
	}
	r.log.Debug("dns refresh failed", "name", name, "type", dns.TypeToString[qtype], "err", err)
	if old := r.cache.peek(key); old != nil && old.kind != kindServFail {
		old.lastFail.Store(now.UnixNano())
		old.prefetched.Store(false)
	} else {
		r.cache.put(servfailEntry(key, name, qtype, now))
	}
	var te *TempError
	if !errors.As(err, &te) {
		err = &TempError{Name: name, Reason: err.Error()}
	}
	return fetchResult{err: err}
}

// upstream is forward-first: the forwarders, then (if enabled) iterative
// resolution from the root hints with whatever time is left.
func (r *Resolver) upstream(ctx context.Context, name string, qtype uint16, do bool) (*dns.Msg, error) {
	var ferr error
	if len(r.fwd) > 0 {
		fctx := ctx
		if r.cfg.Recursion {
			// leave recursion a third of the deadline
			var cancel context.CancelFunc
			fctx, cancel = context.WithTimeout(ctx, r.timeout*2/3)
			defer cancel()
		}
		m, err := r.forward(fctx, name, qtype, do)
		if err == nil {
			return m, nil
		}
		ferr = err
	}
	if r.cfg.Recursion {
		r.stats.recursions.Add(1)
		m, err := r.recurse(ctx, name, qtype, do)
		if err == nil {
			return m, nil
		}
		if ferr != nil {
			return nil, fmt.Errorf("%v; recursion: %w", ferr, err)
		}
		return nil, err
	}
	if ferr != nil {
		return nil, ferr
	}
	return nil, &TempError{Name: name, Reason: "no forwarders and recursion off"}
}

// Pin replaces the set of pinned names: next hops with queued mail. Their
// MX, A and AAAA answers (and the addresses of their MX targets) are kept
// fresh ahead of expiry and never evicted while pinned.
func (r *Resolver) Pin(names []string) {
	canon := make([]string, 0, len(names))
	for _, n := range names {
		canon = append(canon, dns.CanonicalName(n))
	}
	r.pinMu.Lock()
	r.pinNames = canon
	r.pinMu.Unlock()
	r.recomputePins()
}

func (r *Resolver) isPinned(name string) bool {
	_, ok := (*r.pins.Load())[name]
	return ok
}

// recomputePins derives the full pin set: the explicit names plus the MX
// targets found in their cached MX answers.
func (r *Resolver) recomputePins() {
	r.pinMu.Lock()
	defer r.pinMu.Unlock()
	set := make(map[string]struct{}, len(r.pinNames)*2)
	for _, n := range r.pinNames {
		set[n] = struct{}{}
		for _, t := range r.cachedMXTargets(n) {
			set[t] = struct{}{}
		}
	}
	r.pins.Store(&set)
}

func (r *Resolver) notePinnedMX(name string) {
	r.pinMu.Lock()
	explicit := false
	for _, n := range r.pinNames {
		explicit = explicit || n == name
	}
	r.pinMu.Unlock()
	if explicit {
		r.recomputePins()
	}
}

func (r *Resolver) cachedMXTargets(name string) []string {
	var out []string
	for _, do := range []bool{false, true} {
		e := r.cache.peek(string(appendKey(nil, mustWireName(name), dns.TypeMX, dns.ClassINET, do)))
		if e == nil || e.kind != kindPositive {
			continue
		}
		m := new(dns.Msg)
		if m.Unpack(e.msg) != nil {
			continue
		}
		for _, rr := range m.Answer {
			if mx, ok := rr.(*dns.MX); ok && mx.Mx != "." {
				out = append(out, dns.CanonicalName(mx.Mx))
			}
		}
	}
	return out
}

// refreshPinned refreshes every pinned name whose answers are missing or in
// the last 10% of their TTL (or stale, at most every 30 s). It runs on a
// timer; tests call it directly.
func (r *Resolver) refreshPinned() {
	now := r.now()
	r.recomputePins()
	r.pinMu.Lock()
	explicit := map[string]bool{}
	for _, n := range r.pinNames {
		explicit[n] = true
	}
	r.pinMu.Unlock()
	for name := range *r.pins.Load() {
		types := []uint16{dns.TypeA, dns.TypeAAAA}
		if explicit[name] {
			types = append(types, dns.TypeMX)
		}
		for _, qt := range types {
			key := string(appendKey(nil, mustWireName(name), qt, dns.ClassINET, false))
			if r.static[key] != nil {
				continue
			}
			e := r.cache.peek(key)
			if e != nil && !e.inLastTenth(now) {
				continue
			}
			if e != nil && now.Sub(time.Unix(0, e.lastFail.Load())) < staleRetry {
				continue
			}
			r.startFetch(key, name, qt, false, false)
		}
	}
}
