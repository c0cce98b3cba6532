// Package smtpd owns the inbound SMTP side of mxbox: the relay, submission
// and implicit-TLS listeners built on go-smtp, the relay policy decided at
// RCPT, AUTH, connection and size limits, the spool space guard, and the
// Received header. A message is acknowledged with 250 only after
// storage has committed it to flash; every error that leaves a session is an
// *smtp.SMTPError with a deliberate code, because go-smtp turns any other
// error returned from Data into a permanent 554.
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/storage"
)

// Spool is the part of storage the SMTP server needs.
type Spool interface {
	NewID() string
	Put(env *storage.Envelope, body []byte) (string, error)
	FreeBytes() (int64, error)
}

// Options carry what the daemon injects.
type Options struct {
	Logger *slog.Logger
	Now    func() time.Time
	// BeforePut may adjust a new envelope before it is stored (delivery
	// defers mail for a next hop it knows is down).
	BeforePut func(env *storage.Envelope)
	// OnQueued is called after each message is committed (delivery wakes up).
	OnQueued func(env *storage.Envelope)
	// TLSDir holds the generated self-signed certificate (data_dir).
	TLSDir string
	// Headroom is added to the spool reserve (storage.Headroom on the device).
	Headroom int64
}

// Server runs the SMTP listeners.
type Server struct {
	cfg      *config.Config
	spool    Spool
	opts     Options
	log      *slog.Logger
	policy   *Policy
	users    *users
	throttle *authThrottle
	tlsConf  *tls.Config
	relayNet []netip.Prefix
	reserve  int64
	mem      *memBudget

	mu        sync.Mutex
	servers   []*smtp.Server
	listeners []*limitListener
	perIP     map[netip.Addr]int
	conns     int

	draining atomic.Bool
	active   atomic.Int64 // open transactions: MAIL seen, DATA not finished
}

// New prepares the server; Start opens the listeners.
func New(cfg *config.Config, spool Spool, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.BeforePut == nil {
		opts.BeforePut = func(*storage.Envelope) {}
	}
	if opts.OnQueued == nil {
		opts.OnQueued = func(*storage.Envelope) {}
	}
	s := &Server{
		cfg:      cfg,
		spool:    spool,
		opts:     opts,
		log:      opts.Logger,
		policy:   NewPolicy(cfg.SMTP.AcceptedDomains),
		users:    newUsers(cfg.SMTP.Users),
		throttle: newAuthThrottle(cfg.SMTP.AuthFailLimit, cfg.SMTP.AuthFailWindow.D(), opts.Now),
		relayNet: cfg.SMTP.RelayPrefixes(),
		reserve:  cfg.SMTP.EffectiveSpoolReserve() + opts.Headroom,
		perIP:    map[netip.Addr]int{},
		mem:      newMemBudget(int64(cfg.SMTP.DataMemory)),
	}
	var err error
	s.tlsConf, err = loadTLS(cfg.SMTP.TLSCert, cfg.SMTP.TLSKey, opts.TLSDir, cfg.Hostname)
	if err != nil {
		return nil, err
	}
	return s, nil
}

type listenerKind int

const (
	kindRelay listenerKind = iota
	kindSubmission
	kindImplicitTLS
)

func (k listenerKind) String() string {
	return [...]string{"smtp", "submission", "submissions"}[k]
}

// Start opens every configured listener and serves in the background.
func (s *Server) Start() error {
	for _, l := range []struct {
		addr string
		kind listenerKind
	}{{s.cfg.SMTP.Listen, kindRelay}, {s.cfg.SMTP.SubmissionListen, kindSubmission}, {s.cfg.SMTP.TLSListen, kindImplicitTLS}} {
		if l.addr == "" {
			continue
		}
		if err := s.listen(l.addr, l.kind); err != nil {
			s.Close()
			return err
		}
	}
	return nil
}

func (s *Server) listen(addr string, kind listenerKind) error {
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("smtp %s listen %s: %w", kind, addr, err)
	}
	ll := &limitListener{Listener: raw, srv: s, implicitTLS: kind == kindImplicitTLS}
	srv := smtp.NewServer(&backend{srv: s, kind: kind})
	srv.Domain = s.cfg.Hostname
	srv.MaxMessageBytes = int64(s.cfg.SMTP.MaxMessageBytes)
	srv.MaxRecipients = s.cfg.SMTP.MaxRecipients
	srv.MaxLineLength = s.cfg.SMTP.MaxLineLength
	srv.ReadTimeout = s.cfg.SMTP.ReadTimeout.D()
	srv.WriteTimeout = s.cfg.SMTP.WriteTimeout.D()
	srv.AllowInsecureAuth = false
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.TLSConfig = s.tlsConf
	srv.ErrorLog = log.New(slogWriter{s.log}, "", 0)
	var l net.Listener = ll
	if kind == kindImplicitTLS {
		l = tls.NewListener(ll, s.tlsConf)
	}
	s.mu.Lock()
	s.servers = append(s.servers, srv)
	s.listeners = append(s.listeners, ll)
	s.mu.Unlock()
	s.log.Info("listening", "service", kind.String(), "addr", raw.Addr().String())
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, smtp.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("smtp serve", "service", kind.String(), "err", err)
		}
	}()
	return nil
}

// Addrs returns the bound address of each listener by service name.
func (s *Server) Addrs() map[string]net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]net.Addr{}
	for i, l := range s.listeners {
		out[s.servers[i].Backend.(*backend).kind.String()] = l.Addr()
	}
	return out
}

// Shutdown stops accepting mail (new connections get 421), lets transactions
// already past MAIL finish until ctx expires, then closes every connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var err error
	for s.active.Load() > 0 && err == nil {
		select {
		case <-tick.C:
		case <-ctx.Done():
			err = fmt.Errorf("smtp shutdown: %d transactions still open: %w", s.active.Load(), ctx.Err())
		}
	}
	s.Close()
	return err
}

// Close closes listeners and connections at once.
func (s *Server) Close() {
	s.draining.Store(true)
	s.mu.Lock()
	servers := append([]*smtp.Server(nil), s.servers...)
	listeners := append([]*limitListener(nil), s.listeners...)
	s.mu.Unlock()
	for _, l := range listeners {
		l.Listener.Close()
	}
	for _, srv := range servers {
		srv.Close()
	}
}

// limitListener enforces the global and per-address connection limits and
// answers 421 itself while the server drains, so go-smtp never sees those
// connections.
type limitListener struct {
	net.Listener
	srv         *Server
	implicitTLS bool
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := addrOf(c.RemoteAddr())
		if reason := l.srv.admit(ip); reason != "" {
			go l.reject(c, reason)
			continue
		}
		return &countedConn{Conn: c, srv: l.srv, ip: ip}, nil
	}
}

func (l *limitListener) reject(c net.Conn, reason string) {
	defer c.Close()
	if l.implicitTLS {
		return // no TLS yet: a plain-text reply would only confuse the client
	}
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "421 %s %s\r\n", reason, l.srv.cfg.Hostname)
}

// admit reserves a connection slot or says why not.
func (s *Server) admit(ip netip.Addr) string {
	if s.draining.Load() {
		return "4.3.2 Service shutting down, try again later"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns >= s.cfg.SMTP.MaxConnections {
		return "4.7.0 Too many connections, try again later"
	}
	if s.perIP[ip] >= s.cfg.SMTP.MaxConnPerIP {
		return "4.7.0 Too many connections from your address, try again later"
	}
	s.conns++
	s.perIP[ip]++
	return ""
}

func (s *Server) release(ip netip.Addr) {
	s.mu.Lock()
	s.conns--
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
	s.mu.Unlock()
}

type countedConn struct {
	net.Conn
	srv  *Server
	ip   netip.Addr
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.srv.release(c.ip) })
	return c.Conn.Close()
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func (s *Server) inRelayNetworks(ip netip.Addr) bool {
	for _, p := range s.relayNet {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// slogWriter routes go-smtp's internal error log into slog.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Warn("smtp", "detail", string(trimNL(p)))
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
