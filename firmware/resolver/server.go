package resolver

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const (
	tcpIdleTimeout  = 10 * time.Second // between queries on one connection
	tcpWriteTimeout = 5 * time.Second
	tcpMaxConns     = 128
	tcpPipeline     = 16 // queries in flight per TCP connection
	udpReadBuf      = 4096
	jobQueuePerWkr  = 4
)

// server holds the listeners. Cache hits are answered inline by the socket
// readers (one per SO_REUSEPORT socket); misses become jobs for a fixed pool
// of workers, so a burst of slow upstream lookups cannot grow goroutines
// without bound: when the queue is full, UDP queries are dropped.
type server struct {
	udp    []*net.UDPConn // one per core, SO_REUSEPORT
	tcp    net.Listener
	jobs   chan job
	tcpSem chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

type job struct {
	pkt    []byte
	client netip.Addr
	tcp    bool
	reply  func([]byte)
}

func (r *Resolver) listen() error {
	s := &server{
		jobs:   make(chan job, r.cfg.Workers*jobQueuePerWkr+1),
		tcpSem: make(chan struct{}, tcpMaxConns),
		conns:  map[net.Conn]struct{}{},
	}
	n := 1
	if haveReusePort {
		n = min(max(runtime.GOMAXPROCS(0), 1), 4)
	}
	var err error
	for range 10 { // port 0: the TCP side of a fresh UDP port may be taken
		if err = s.open(r.cfg.Listen, n); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("resolver: listen %s: %v", r.cfg.Listen, err)
	}
	r.srv = s
	for _, c := range s.udp {
		r.wg.Add(1)
		go r.serveUDP(c)
	}
	r.wg.Add(1)
	go r.serveTCP(s.tcp)
	for range max(r.cfg.Workers, 1) {
		r.wg.Add(1)
		go r.worker()
	}
	r.log.Info("dns resolver listening", "addr", s.udp[0].LocalAddr().String(), "udp_sockets", len(s.udp))
	return nil
}

func (s *server) open(addr string, n int) error {
	lc := net.ListenConfig{Control: reusePort}
	ctx := context.Background()
	var conns []*net.UDPConn
	fail := func(err error) error {
		for _, c := range conns {
			c.Close()
		}
		return err
	}
	for i := range n {
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return fail(err)
		}
		conns = append(conns, pc.(*net.UDPConn))
		if i == 0 {
			addr = pc.LocalAddr().String()
		}
	}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fail(err)
	}
	s.udp, s.tcp = conns, ln
	return nil
}

func (s *server) track(c net.Conn, add bool) {
	s.mu.Lock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	s.mu.Unlock()
}

func (s *server) close() {
	for _, c := range s.udp {
		c.Close()
	}
	s.tcp.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

// Addr returns the bound UDP and TCP addresses (nil before Start or when
// listen is empty).
func (r *Resolver) Addr() (udp, tcp net.Addr) {
	if r.srv == nil {
		return nil, nil
	}
	return r.srv.udp[0].LocalAddr(), r.srv.tcp.Addr()
}

func replyLimit(q *query, tcp bool) int {
	switch {
	case tcp:
		return maxUDPReply
	case q.edns:
		return min(q.udpSize, ednsSize)
	}
	return 512
}

// fastPath handles everything that needs no upstream: parse errors, ACL,
// rate limit, static records and fresh cache hits, appending the reply to
// dst. It returns nil, false to drop the packet and nil, true when the
// query needs slowPath.
func (r *Resolver) fastPath(dst, p []byte, client netip.Addr, tcp bool) (resp []byte, slow bool) {
	q, rcode, ok := parseQuery(p)
	if !ok {
		r.stats.dropped.Add(1)
		return nil, false
	}
	r.stats.queries.Add(1)
	if !r.allowed(client) {
		r.stats.refused.Add(1)
		return appendError(dst, p, &q, dns.RcodeRefused, 0), false
	}
	if !tcp && r.limiter != nil {
		switch r.limiter.check(client) {
		case slip:
			r.stats.rateLimited.Add(1)
			return appendError(dst, p, &q, dns.RcodeSuccess, flagTC), false
		case drop:
			r.stats.rateLimited.Add(1)
			return nil, false
		}
	}
	switch {
	case rcode != 0:
		return appendError(dst, p, &q, rcode, 0), false
	case q.edns && q.ednsVersion != 0:
		return appendError(dst, p, &q, dns.RcodeBadVers, 0), false
	case q.qclass != dns.ClassINET:
		return appendError(dst, p, &q, dns.RcodeNotImplemented, 0), false
	case q.qtype == dns.TypeAXFR || q.qtype == dns.TypeIXFR || q.qtype == dns.TypeOPT:
		return appendError(dst, p, &q, dns.RcodeRefused, 0), false
	}
	var kb [maxNameWire + 8]byte
	key := appendKey(kb[:0], q.qname, q.qtype, q.qclass, q.do)
	now := r.now()
	if e := r.lookupCached(key, now); e != nil {
		r.stats.hits.Add(1)
		return appendAnswer(dst, p, &q, e, now, false, replyLimit(&q, tcp)), false
	}
	if e := r.cachedStale(key, now); e != nil {
		r.stats.misses.Add(1)
		r.stats.stale.Add(1)
		return appendAnswer(dst, p, &q, e, now, true, replyLimit(&q, tcp)), false
	}
	return nil, true
}

// slowPath resolves a query fastPath could not answer, within the hard
// deadline; the client gets fresh data, stale data, or SERVFAIL.
func (r *Resolver) slowPath(dst, p []byte, tcp bool) []byte {
	q, _, ok := parseQuery(p)
	if !ok {
		return nil
	}
	name, _, err := dns.UnpackDomainName(p, headerLen)
	if err != nil {
		return appendError(dst, p, &q, dns.RcodeFormatError, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	e, stale, err := r.resolve(ctx, name, q.qtype, q.do)
	if err != nil || int(e.qEnd) != q.qEnd { // qEnd differs only if the name did not round-trip
		r.stats.servfails.Add(1)
		return appendError(dst, p, &q, dns.RcodeServerFailure, 0)
	}
	return appendAnswer(dst, p, &q, e, r.now(), stale, replyLimit(&q, tcp))
}

// batchConn is recvmmsg/sendmmsg on Linux (one message per call elsewhere):
// under load one syscall moves up to udpBatch packets each way, which is
// most of the cost of a cache hit.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

const udpBatch = 32

func (r *Resolver) serveUDP(c *net.UDPConn) {
	defer r.wg.Done()
	var bc batchConn = ipv4.NewPacketConn(c)
	if la, ok := c.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		bc = ipv6.NewPacketConn(c)
	}
	in := make([]ipv4.Message, udpBatch)
	out := make([]ipv4.Message, udpBatch)
	outBufs := make([][]byte, udpBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, udpReadBuf)}
		out[i].Buffers = make([][]byte, 1)
		outBufs[i] = make([]byte, 0, udpReadBuf)
	}
	for {
		n, err := bc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		k := 0
		for i := range n {
			m := &in[i]
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			from := ua.AddrPort()
			pkt := m.Buffers[0][:m.N]
			resp, slow := r.fastPath(outBufs[k][:0], pkt, from.Addr().Unmap(), false)
			if slow {
				r.enqueueUDP(c, pkt, from)
				continue
			}
			if resp != nil {
				out[k].Buffers[0] = resp
				out[k].Addr = ua
				k++
			}
		}
		for done := 0; done < k; {
			w, err := bc.WriteBatch(out[done:k], 0)
			if err != nil || w == 0 {
				break // UDP is best effort; the client retries
			}
			done += w
		}
		for i := range k {
			out[i].Addr = nil
		}
	}
}

func (r *Resolver) enqueueUDP(c *net.UDPConn, pkt []byte, from netip.AddrPort) {
	j := job{pkt: append([]byte(nil), pkt...), client: from.Addr().Unmap(), reply: func(b []byte) {
		if b != nil {
			c.WriteToUDPAddrPort(b, from) //nolint:errcheck // UDP: best effort
		}
	}}
	select {
	case r.srv.jobs <- j:
	default:
		r.stats.dropped.Add(1) // overloaded: the client will retry
	}
}

func (r *Resolver) worker() {
	defer r.wg.Done()
	buf := make([]byte, 0, udpReadBuf)
	for {
		select {
		case j := <-r.srv.jobs:
			j.reply(r.slowPath(buf[:0], j.pkt, j.tcp))
		case <-r.done:
			return
		}
	}
}

func (r *Resolver) serveTCP(ln net.Listener) {
	defer r.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case r.srv.tcpSem <- struct{}{}:
		default:
			c.Close() // too many connections
			continue
		}
		r.wg.Add(1)
		go r.tcpConn(c)
	}
}

// tcpConn serves one TCP connection: queries are read back to back
// (pipelining) and answered as they complete, possibly out of order, which
// RFC 7766 allows; the connection closes after tcpIdleTimeout of silence.
func (r *Resolver) tcpConn(c net.Conn) {
	defer r.wg.Done()
	defer func() { <-r.srv.tcpSem }()
	r.srv.track(c, true)
	defer r.srv.track(c, false)
	defer c.Close()
	var client netip.Addr
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		client = ta.AddrPort().Addr()
	}
	var wmu sync.Mutex
	write := func(b []byte) {
		if b == nil {
			return
		}
		wmu.Lock()
		defer wmu.Unlock()
		frame := make([]byte, 2, 2+len(b))
		binary.BigEndian.PutUint16(frame, uint16(len(b)))
		c.SetWriteDeadline(time.Now().Add(tcpWriteTimeout)) //nolint:errcheck
		c.Write(append(frame, b...))                        //nolint:errcheck
	}
	sem := make(chan struct{}, tcpPipeline)
	var inflight sync.WaitGroup
	br := bufio.NewReader(c)
	out := make([]byte, 0, udpReadBuf)
	for {
		c.SetReadDeadline(time.Now().Add(r.tcpIdle)) //nolint:errcheck
		var lb [2]byte
		if _, err := io.ReadFull(br, lb[:]); err != nil {
			break
		}
		n := int(binary.BigEndian.Uint16(lb[:]))
		if n < headerLen {
			break
		}
		pkt := make([]byte, n)
		if _, err := io.ReadFull(br, pkt); err != nil {
			break
		}
		resp, slow := r.fastPath(out[:0], pkt, client, true)
		if !slow {
			write(resp)
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-r.done:
			return
		}
		inflight.Add(1)
		j := job{pkt: pkt, client: client, tcp: true, reply: func(b []byte) {
			write(b)
			<-sem
			inflight.Done()
		}}
		select {
		case r.srv.jobs <- j:
		case <-r.done:
			return
		}
	}
	waited := make(chan struct{})
	go func() { inflight.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-r.done:
	}
}
