package delivery

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/storage"
)

// timeouts are RFC 5321 §4.5.3.2's, from config.
type timeouts struct {
	connect, greeting, command, data time.Duration
}

func timeoutsFrom(d *config.Delivery) timeouts {
	return timeouts{d.ConnectTimeout.D(), d.GreetingTimeout.D(), d.CommandTimeout.D(), d.DataTimeout.D()}
}

// upstream is one open SMTP session to a next hop, reusable for several
// messages.
type upstream struct {
	c       *smtp.Client
	raw     net.Conn
	hop     string
	host    string // name used for TLS and Remote-MTA
	addr    netip.AddrPort
	tls     bool
	maxSize int64
	utf8    bool
	idle    time.Time // when it went back to the pool
	used    int       // transactions completed
}

func (u *upstream) close() { _ = u.c.Close() }

// quit ends the session politely but without waiting long for the reply.
func (u *upstream) quit() {
	_ = u.raw.SetDeadline(time.Now().Add(2 * time.Second))
	_ = u.c.Quit()
	_ = u.c.Close()
}

// writeDeadlineConn puts a deadline on every write: go-smtp clears
// deadlines after each command, so a message body written to an upstream
// that stopped reading would otherwise block forever (RFC 5321 §4.5.3.2.5
// data-block timeout).
type writeDeadlineConn struct {
	net.Conn
	d time.Duration
}

func (c *writeDeadlineConn) Write(b []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.d))
	return c.Conn.Write(b)
}

// greetedConn replays a synthetic 220 greeting before the real stream:
// go-smtp's client always reads a greeting first, but after our own
// plaintext EHLO + STARTTLS there is none. It is how we get STARTTLS with
// our hostname in EHLO, which go-smtp v0.26 cannot do by itself
// (NewClientStartTLS says "EHLO localhost").
type greetedConn struct {
	net.Conn
	pending []byte
}

func (c *greetedConn) Read(b []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// errStage marks where a session failed, for logs and for telling "the
// host is unusable" (try the next) from "this message failed".
type sessionError struct {
	stage string
	err   error
}

func (e *sessionError) Error() string { return e.stage + ": " + e.err.Error() }
func (e *sessionError) Unwrap() error { return e.err }

// dial opens a session: TCP connect (connect timeout), greeting, EHLO with
// our hostname, STARTTLS per policy, AUTH when configured. Every failure is
// a reason to try the next address, never a verdict on the message.
func (r *Runner) dial(ctx context.Context, rt *route, hop, host string, addr netip.AddrPort) (*upstream, error) {
	d := net.Dialer{Timeout: r.to.connect}
	raw, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, &sessionError{"connect", err}
	}
	wc := &writeDeadlineConn{Conn: raw, d: r.to.command}
	u := &upstream{raw: raw, hop: hop, host: host, addr: addr}
	var conn net.Conn = wc
	if rt.tlsPolicy != tlsNone {
		conn, u.tls, err = r.startTLS(wc, rt, host)
		if err != nil {
			raw.Close()
			return nil, err
		}
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout = r.to.greeting
	c.SubmissionTimeout = r.to.data
	if err := c.Hello(r.hostname); err != nil {
		c.Close()
		return nil, &sessionError{"greeting/EHLO", err}
	}
	c.CommandTimeout = r.to.command
	u.c = c
	if rt.authUser != "" {
		if !u.tls && rt.tlsPolicy != tlsNone {
			c.Close()
			return nil, &sessionError{"AUTH", errors.New("refusing to send credentials without TLS")}
		}
		if ok, _ := c.Extension("AUTH"); !ok {
			c.Close()
			return nil, &sessionError{"AUTH", errors.New("upstream does not offer AUTH")}
		}
		if err := c.Auth(sasl.NewPlainClient("", rt.authUser, rt.authPass)); err != nil {
			c.Close()
			return nil, &sessionError{"AUTH", err}
		}
	}
	if n, ok := c.MaxMessageSize(); ok {
		u.maxSize = int64(n)
	}
	u.utf8, _ = c.Extension("SMTPUTF8")
	return u, nil
}

// startTLS speaks the plaintext part by hand: greeting, EHLO <hostname>,
// STARTTLS, handshake. It returns the connection to run go-smtp on, which is
// the TLS one when TLS was negotiated.
func (r *Runner) startTLS(conn net.Conn, rt *route, host string) (net.Conn, bool, error) {
	fail := func(stage string, err error) (net.Conn, bool, error) {
		return nil, false, &sessionError{stage, err}
	}
	_ = conn.SetDeadline(time.Now().Add(r.to.greeting))
	br := bufio.NewReaderSize(conn, 1024)
	tp := textproto.NewReader(br)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return fail("greeting", replyErr(err))
	}
	_ = conn.SetDeadline(time.Now().Add(r.to.command))
	if _, err := fmt.Fprintf(conn, "EHLO %s\r\n", r.hostname); err != nil {
		return fail("EHLO", err)
	}
	_, msg, err := tp.ReadResponse(250)
	if err != nil {
		return fail("EHLO", replyErr(err))
	}
	offered := false
	for _, l := range strings.Split(msg, "\n")[1:] {
		if strings.EqualFold(strings.Fields(l + " ")[0], "STARTTLS") {
			offered = true
		}
	}
	if !offered {
		if rt.tlsPolicy == tlsRequired {
			return fail("STARTTLS", errors.New("TLS required by policy but not offered"))
		}
		_ = conn.SetDeadline(time.Time{})
		// go-smtp will greet again with a second EHLO, which RFC 5321
		// allows; the replayed 220 stands in for the greeting.
		return &greetedConn{Conn: conn, pending: []byte("220 replay\r\n")}, false, nil
	}
	if _, err := fmt.Fprintf(conn, "STARTTLS\r\n"); err != nil {
		return fail("STARTTLS", err)
	}
	if _, _, err := tp.ReadResponse(220); err != nil {
		return fail("STARTTLS", replyErr(err))
	}
	if br.Buffered() > 0 {
		// Bytes after the 220 and before our ClientHello are an injection
		// attempt (CVE-2011-0411 class): drop the connection.
		return fail("STARTTLS", errors.New("upstream sent data before TLS handshake"))
	}
	tc := tls.Client(conn, rt.tlsConfig(host))
	if err := tc.Handshake(); err != nil {
		return fail("TLS handshake", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return &greetedConn{Conn: tc, pending: []byte("220 tls\r\n")}, true, nil
}

// replyErr turns a textproto reply error into the go-smtp type the rest of
// the code classifies.
func replyErr(err error) error {
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return &smtp.SMTPError{Code: pe.Code, Message: pe.Msg}
	}
	return err
}

// deliverTx runs one MAIL/RCPT/DATA transaction on u for rcpts and returns
// one result per recipient. broken reports that the session is unusable
// (I/O error, timeout): results then say "temporary" for recipients that
// did not get their final answer.
func (r *Runner) deliverTx(u *upstream, env *storage.Envelope, rcpts []*storage.Recipient, body []byte) (res []*result, broken bool) {
	res = make([]*result, len(rcpts))
	fillAll := func(x *result) {
		for i := range res {
			if res[i] == nil {
				res[i] = x
			}
		}
	}
	isIO := func(err error) bool {
		var se *smtp.SMTPError
		return !errors.As(err, &se)
	}
	if u.maxSize > 0 && int64(len(body)) > u.maxSize {
		fillAll(&result{perm: true, status: "5.3.4", remote: u.host,
			diag: fmt.Sprintf("message size %d exceeds the limit %d of %s", len(body), u.maxSize, u.host)})
		return res, false
	}
	if env.UTF8 && !u.utf8 {
		fillAll(&result{perm: true, status: "5.6.7", remote: u.host,
			diag: fmt.Sprintf("%s does not support SMTPUTF8 and the message needs it", u.host)})
		return res, false
	}
	opts := &smtp.MailOptions{Size: int64(len(body)), UTF8: env.UTF8, EnvelopeID: env.EnvID}
	switch strings.ToUpper(env.Ret) {
	case "FULL":
		opts.Return = smtp.DSNReturnFull
	case "HDRS":
		opts.Return = smtp.DSNReturnHeaders
	}
	if err := u.c.Mail(env.From, opts); err != nil {
		fillAll(fromSMTP(err, u.host))
		if !isIO(err) {
			_ = u.c.Reset()
		}
		return res, isIO(err)
	}
	accepted := 0
	for i, rc := range rcpts {
		err := u.c.Rcpt(rc.Addr, rcptOptions(rc))
		if err == nil {
			accepted++
			continue
		}
		if isIO(err) {
			fillAll(fromSMTP(err, u.host))
			return res, true
		}
		res[i] = fromSMTP(err, u.host)
	}
	if accepted == 0 {
		if err := u.c.Reset(); err != nil {
			return res, true
		}
		return res, false
	}
	w, err := u.c.Data()
	if err != nil {
		fillAll(fromSMTP(err, u.host))
		if !isIO(err) {
			_ = u.c.Reset()
		}
		return res, isIO(err)
	}
	if _, err := w.Write(body); err != nil {
		fillAll(fromSMTP(err, u.host))
		return res, true
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		// Without the final reply we cannot know; a retry may duplicate
		// the message but never loses it (RFC 5321 §6.1).
		fillAll(fromSMTP(err, u.host))
		return res, isIO(err)
	}
	fillAll(&result{ok: true, status: "2.0.0", diag: "250 " + resp.StatusText, smtpDiag: true, remote: u.host})
	u.used++
	return res, false
}

func rcptOptions(rc *storage.Recipient) *smtp.RcptOptions {
	if len(rc.Notify) == 0 && rc.ORcpt == "" {
		return nil
	}
	o := &smtp.RcptOptions{}
	for _, n := range rc.Notify {
		o.Notify = append(o.Notify, smtp.DSNNotify(strings.ToUpper(n)))
	}
	if typ, addr, ok := strings.Cut(rc.ORcpt, ";"); ok && strings.EqualFold(typ, "rfc822") && addr != "" {
		o.OriginalRecipientType = smtp.DSNAddressTypeRFC822
		o.OriginalRecipient = addr
	}
	return o
}

// probe is the light health check of a down next hop: connect, EHLO, QUIT.
func (r *Runner) probe(ctx context.Context, addr netip.AddrPort) error {
	d := net.Dialer{Timeout: r.to.connect}
	raw, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	defer raw.Close()
	c := smtp.NewClient(&writeDeadlineConn{Conn: raw, d: r.to.command})
	c.CommandTimeout = min(r.to.greeting, 30*time.Second)
	if err := c.Hello(r.hostname); err != nil {
		return err
	}
	_ = c.Quit()
	return nil
}
