// Package resolver is mxbox's caching DNS resolver: it serves the site's LAN
// over UDP and TCP and serves mxbox itself in-process, and it keeps answering
// from its cache when upstream DNS is gone, because a mail gateway whose
// resolver fails cannot deliver mail.
//
// A query flows listener (ACL, per-client rate limit) → static records →
// cache (fresh hit; stale handling per RFC 8767) → forwarders (fastest healthy
// first by smoothed RTT, failover within the query, TCP on truncation) →
// iterative recursion from root hints → cache → answer. Cache hits are served
// on the socket readers straight from packed wire bytes; misses go to a
// bounded worker pool.
//
// Serve-stale: an expired answer is kept for max_stale. When a refresh fails,
// or takes longer than 1.8 s, the client gets the expired data with TTL 30 and
// EDE 3 "Stale Answer"; the failed name is retried at most every 30 s. An
// upstream failure (timeout, SERVFAIL, REFUSED, unusable truncation) never
// replaces cached data; only a real NOERROR/NXDOMAIN answer does.
//
// The cache is snapshotted to a SnapshotStore (every snapshot_interval if it
// changed, and on Close) with original expiry times and reloaded at Start, so
// a box rebooted during an outage still answers what it knew, as stale data.
//
// # Go API for delivery
//
// LookupMX and LookupHost use the same cache, stale rules and upstreams as
// the socket path. Their errors tell permanent from temporary:
//
//   - errors.Is(err, ErrNotFound): NXDOMAIN, permanent (bounce).
//   - errors.Is(err, ErrNoData): the name exists without records of that type;
//     for MX, fall back to the domain's A/AAAA (RFC 5321 §5.1).
//   - errors.As(err, new(*TempError)) (also Temporary() == true): SERVFAIL,
//     timeout, upstreams down with nothing cached: retry later.
//
// A null MX (RFC 7505) is returned as a single *net.MX with Host "." and
// Pref 0: the domain accepts no mail, the caller should bounce. Pin marks the
// next hops of queued mail: their answers are refreshed ahead of expiry and
// never evicted.
//
// Only this package imports github.com/miekg/dns; dnstest is its test server.
package resolver
