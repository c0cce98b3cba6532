package delivery

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/storage"
	"github.com/mxbox/mxbox/test/clock"
)

// ---- clock ----

type fakeClock = clock.Clock

func newClock() *fakeClock { return clock.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) }

// ---- upstream sink: a go-smtp server on a chosen loopback address ----

type sunk struct {
	From  string
	Rcpts []string
	Body  []byte
	Helo  string
	TLS   bool
	Auth  string
}

type sink struct {
	Addr string // ip:port
	IP   string
	ln   net.Listener
	srv  *smtp.Server

	mu       sync.Mutex
	msgs     []sunk
	conns    int
	rcptErr  map[string]*smtp.SMTPError
	mailErr  *smtp.SMTPError
	dataErr  *smtp.SMTPError
	user     string
	pass     string
	delay    time.Duration
	received chan sunk
}

type sinkOpts struct {
	port     int
	tls      *tls.Config
	user     string
	pass     string
	maxBytes int64
	delay    time.Duration // before answering each DATA: a slow upstream
}

// startSink serves SMTP on ip (127.0.0.x) at port (0 = any); it stops with the test.
func startSink(t testing.TB, ip string, o sinkOpts) *sink {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(o.port)))
	if err != nil {
		t.Fatalf("sink listen %s:%d: %v", ip, o.port, err)
	}
	s := &sink{Addr: ln.Addr().String(), IP: ip, ln: ln, rcptErr: map[string]*smtp.SMTPError{},
		user: o.user, pass: o.pass, delay: o.delay, received: make(chan sunk, 10000)}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s.mu.Lock()
		s.conns++
		s.mu.Unlock()
		return &sinkSession{s: s, c: c}, nil
	}))
	srv.Domain = "sink-" + ip
	srv.TLSConfig = o.tls
	srv.EnableDSN = true
	srv.EnableSMTPUTF8 = true
	srv.MaxMessageBytes = o.maxBytes
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.ErrorLog = log4sink{}
	s.srv = srv
	go srv.Serve(ln) //nolint:errcheck // ends at Close
	t.Cleanup(s.Stop)
	return s
}

type log4sink struct{}

func (log4sink) Printf(string, ...any) {}
func (log4sink) Println(...any)        {}

func (s *sink) Stop() { s.srv.Close() }

func (s *sink) Messages() []sunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sunk(nil), s.msgs...)
}

func (s *sink) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

func (s *sink) SetRcptErr(addr string, e *smtp.SMTPError) {
	s.mu.Lock()
	s.rcptErr[addr] = e
	s.mu.Unlock()
}

func (s *sink) SetMailErr(e *smtp.SMTPError) {
	s.mu.Lock()
	s.mailErr = e
	s.mu.Unlock()
}

// waitMessages waits until the sink holds n messages.
func (s *sink) waitMessages(t testing.TB, n int, within time.Duration) []sunk {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if m := s.Messages(); len(m) >= n {
			return m
		}
		time.Sleep(10 * time.Millisecond)
	}
	m := s.Messages()
	t.Fatalf("sink %s: %d messages after %v, want %d", s.Addr, len(m), within, n)
	return nil
}

type sinkSession struct {
	s     *sink
	c     *smtp.Conn
	cur   sunk
	authd string
}

func (ss *sinkSession) AuthMechanisms() []string {
	if ss.s.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *sinkSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if user != ss.s.user || pass != ss.s.pass {
			return smtp.ErrAuthFailed
		}
		ss.authd = user
		return nil
	}), nil
}

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.s.mu.Lock()
	e := ss.s.mailErr
	ss.s.mu.Unlock()
	if e != nil {
		return e
	}
	if ss.s.user != "" && ss.authd == "" {
		return smtp.ErrAuthRequired
	}
	_, isTLS := ss.c.TLSConnectionState()
	ss.cur = sunk{From: from, Helo: ss.c.Hostname(), TLS: isTLS, Auth: ss.authd}
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.s.mu.Lock()
	e := ss.s.rcptErr[to]
	ss.s.mu.Unlock()
	if e != nil {
		return e
	}
	ss.cur.Rcpts = append(ss.cur.Rcpts, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if ss.s.delay > 0 {
		time.Sleep(ss.s.delay)
	}
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if ss.s.dataErr != nil {
		return ss.s.dataErr
	}
	ss.cur.Body = b
	ss.s.msgs = append(ss.s.msgs, ss.cur)
	select {
	case ss.s.received <- ss.cur:
	default:
	}
	return nil
}

func (ss *sinkSession) Reset()        { ss.cur = sunk{} }
func (ss *sinkSession) Logout() error { return nil }

// freePort finds a TCP port free on every given loopback IP, so one host
// name with several addresses can use one configured port.
func freePort(t testing.TB, ips ...string) int {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ok := true
		var others []net.Listener
		for _, ip := range ips[1:] {
			l2, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
			if err != nil {
				ok = false
				break
			}
			others = append(others, l2)
		}
		ln.Close()
		for _, l := range others {
			l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no common free port")
	return 0
}

// ---- TLS material for sinks ----

// testCert makes a self-signed certificate for the names and returns the
// server config and the CA file path (the cert itself) for tls_ca_file.
func testCert(t testing.TB, names ...string) (*tls.Config, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: names, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kb, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}}, path
}

// ---- fake resolver (in-memory) ----

var (
	errFakeNX   = errors.New("fake NXDOMAIN")
	errFakeNoD  = errors.New("fake NODATA")
	errFakeTemp = errors.New("fake SERVFAIL")
)

func init() {
	dnsNotFoundErrs = append(dnsNotFoundErrs, errFakeNX)
	dnsNoDataErrs = append(dnsNoDataErrs, errFakeNoD)
}

type fakeResolver struct {
	mu      sync.Mutex
	mx      map[string][]*net.MX
	mxErr   map[string]error
	hosts   map[string][]netip.Addr
	hostErr map[string]error
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{mx: map[string][]*net.MX{}, mxErr: map[string]error{}, hosts: map[string][]netip.Addr{}, hostErr: map[string]error{}}
}

func (f *fakeResolver) LookupMX(_ context.Context, d string) ([]*net.MX, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.mxErr[d]; e != nil {
		return nil, fmt.Errorf("lookup %s MX: %w", d, e)
	}
	if m, ok := f.mx[d]; ok {
		return m, nil
	}
	if _, ok := f.hosts[d]; ok {
		return nil, fmt.Errorf("lookup %s MX: %w", d, errFakeNoD)
	}
	return nil, fmt.Errorf("lookup %s MX: %w", d, errFakeNX)
}

func (f *fakeResolver) LookupHost(_ context.Context, h string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.hostErr[h]; e != nil {
		return nil, fmt.Errorf("lookup %s: %w", h, e)
	}
	if a, ok := f.hosts[h]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("lookup %s: %w", h, errFakeNX)
}

func addrs(ips ...string) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		out = append(out, netip.MustParseAddr(ip))
	}
	return out
}

// ---- runner fixture ----

type fixture struct {
	t     *testing.T
	clock *fakeClock
	spool *storage.Spool
	r     *Runner
	cfg   *config.Config
}

// baseDelivery is test-speed [delivery] settings; tests append their own keys.
const baseDelivery = `
connect_timeout = "500ms"
greeting_timeout = "2s"
command_timeout = "2s"
data_timeout = "2s"
probe_interval = "100ms"
idle_timeout = "2s"
concurrency = 4
hop_concurrency = 4
down_after = 2
tls = "none"
`

func newFixture(t *testing.T, delivery string, res Resolver) *fixture {
	t.Helper()
	return newFixtureWith(t, "", delivery, res)
}

// newFixtureWith also takes top-level sections placed before [delivery].
func newFixtureWith(t *testing.T, pre, delivery string, res Resolver) *fixture {
	t.Helper()
	text := "hostname = \"mxbox.test\"\n" + pre + "[delivery]\n" + overrideBase(delivery) + delivery
	cfg, err := config.Parse("test.toml", []byte(text))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	clock := newClock()
	sp, err := storage.Open(t.TempDir(), storage.Options{Now: clock.Now, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, sp, res, Options{Now: clock.Now, Logger: testLog(t), Jitter: func(n int64) int64 { return n / 2 }})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, clock: clock, spool: sp, r: r, cfg: cfg}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.Close(ctx)
		sp.Close()
	})
	return f
}

// overrideBase drops the base keys that delivery sets itself.
func overrideBase(delivery string) string {
	var out []string
	for _, l := range strings.Split(baseDelivery, "\n") {
		k, _, ok := strings.Cut(l, "=")
		if ok && strings.Contains("\n"+delivery, "\n"+strings.TrimSpace(k)+" =") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return quietLog()
}

// put queues a message from `from` to rcpts and notifies the runner.
func (f *fixture) put(from string, rcpts ...string) string {
	f.t.Helper()
	env := &storage.Envelope{From: from}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, storage.Recipient{Addr: r})
	}
	return f.putEnv(env)
}

func (f *fixture) putEnv(env *storage.Envelope) string {
	f.t.Helper()
	body := fmt.Sprintf("From: <%s>\r\nTo: <x@y>\r\nSubject: test %d\r\nMessage-ID: <%d@test>\r\n\r\nHello.\r\n", env.From, time.Now().UnixNano(), time.Now().UnixNano())
	id, err := f.spool.Put(env, []byte(body))
	if err != nil {
		f.t.Fatal(err)
	}
	f.r.Notify(id)
	return id
}

// waitFor polls cond (bounded) and fails with msg.
func waitFor(t testing.TB, within time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out after %v: %s", within, msg)
}

// env returns a message's envelope or nil once it is gone.
func (f *fixture) env(id string) *storage.Envelope {
	e, err := f.spool.Envelope(id)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return e
}

// waitGone waits until a message left the queue.
func (f *fixture) waitGone(id string, within time.Duration) {
	f.t.Helper()
	waitFor(f.t, within, "message "+id+" still queued", func() bool { return f.env(id) == nil })
}

// waitAttempts waits until a message has at least n attempts recorded.
func (f *fixture) waitAttempts(id string, n int, within time.Duration) *storage.Envelope {
	f.t.Helper()
	var e *storage.Envelope
	waitFor(f.t, within, fmt.Sprintf("message %s: want %d attempts", id, n), func() bool {
		e = f.env(id)
		return e != nil && e.Attempts >= n
	})
	return e
}

// dsns returns the DSN messages (null sender) in the spool.
func (f *fixture) dsns() []*storage.Envelope {
	var out []*storage.Envelope
	f.spool.Walk("", func(e *storage.Envelope) bool {
		if e.From == "" {
			out = append(out, e)
		}
		return true
	})
	return out
}

var _ = bytes.Contains
var _ = strings.Contains

var tempErr = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"}

func itoa(n int) string { return fmt.Sprint(n) }
