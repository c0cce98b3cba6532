package smtpd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mxbox/mxbox/storage"
)

// Replies chosen in one place. Local trouble is always 4xx: a sender's MTA
// retries a 4xx, while a 5xx would bounce mail that did nothing wrong.
var (
	errShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down, try again later"}
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errAuthThrottle = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many failed authentication attempts, try again later"}
	errNoSpace      = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage, try again later"}
	errLocal        = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Local error in processing, try again later"}
	errRelayDenied  = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relay access denied"}
	errRouting      = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relay access denied: routing characters in local part"}
	errLoop         = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 4, 6}, Message: "Too many Received headers: mail loop detected"}
	errBadSender    = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	errBadRcpt      = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	errNeedUTF8     = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: "Non-ASCII address requires SMTPUTF8"}
	errResources    = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Insufficient system resources, try again later"}
	errTimeout      = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Timeout or connection error while receiving the message"}
)

type backend struct {
	srv  *Server
	kind listenerKind
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	ip := addrOf(c.Conn().RemoteAddr())
	return &session{srv: b.srv, kind: b.kind, conn: c, ip: ip, relayNet: b.srv.inRelayNetworks(ip)}, nil
}

// session is one SMTP connection's state.
type session struct {
	srv      *Server
	kind     listenerKind
	conn     *smtp.Conn
	ip       netip.Addr
	relayNet bool
	authUser string

	inTxn bool
	from  string
	mail  smtp.MailOptions
	rcpts []storage.Recipient
}

func (s *session) tls() bool {
	_, ok := s.conn.TLSConnectionState()
	return ok
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.srv.throttle.blocked(s.ip.String()) {
		return nil, errAuthThrottle
	}
	check := func(identity, user, pass string) error {
		if identity != "" && identity != user {
			s.srv.throttle.fail(s.ip.String())
			return smtp.ErrAuthFailed
		}
		if !s.srv.users.check(user, pass) {
			s.srv.throttle.fail(s.ip.String())
			s.srv.log.Warn("auth failed", "client", s.ip.String(), "user", user)
			return smtp.ErrAuthFailed
		}
		s.authUser = user
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(check), nil
	case sasl.Login:
		return &loginServer{check: func(u, p string) error { return check("", u, p) }}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) beginTxn() {
	if !s.inTxn {
		s.inTxn = true
		s.srv.active.Add(1)
	}
}

func (s *session) endTxn() {
	if s.inTxn {
		s.inTxn = false
		s.srv.active.Add(-1)
	}
	s.from, s.mail, s.rcpts = "", smtp.MailOptions{}, nil
}

func (s *session) Reset()        { s.endTxn() }
func (s *session) Logout() error { s.endTxn(); return nil }

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.srv.draining.Load() {
		return errShuttingDown
	}
	if s.kind != kindRelay && s.authUser == "" {
		return errAuthRequired
	}
	if from != "" {
		if _, err := ParseAddress(from); err != nil {
			return errBadSender
		}
		if !opts.UTF8 && !isASCII(from) {
			return errNeedUTF8
		}
	}
	if err := s.srv.checkSpace(opts.Size); err != nil {
		return err
	}
	s.endTxn()
	s.beginTxn()
	s.from = from
	s.mail = *opts
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	addr, err := ParseAddress(to)
	if err != nil {
		return errBadRcpt
	}
	if !s.mail.UTF8 && !isASCII(to) {
		return errNeedUTF8
	}
	trusted := s.relayNet || s.authUser != ""
	switch s.srv.policy.Decide(addr, trusted) {
	case RelayDenied:
		s.srv.log.Info("relay denied", "client", s.ip.String(), "rcpt", to)
		return errRelayDenied
	case RelayRouting:
		s.srv.log.Info("relay denied", "client", s.ip.String(), "rcpt", to, "reason", "routing characters")
		return errRouting
	}
	canon := addr.String()
	for _, r := range s.rcpts {
		if r.Addr == canon {
			return nil // duplicate RCPT: deliver once
		}
	}
	r := storage.Recipient{Addr: canon}
	if opts != nil {
		for _, n := range opts.Notify {
			r.Notify = append(r.Notify, string(n))
		}
		if opts.OriginalRecipient != "" {
			r.ORcpt = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
		}
	}
	s.rcpts = append(s.rcpts, r)
	return nil
}

func (s *session) Data(r io.Reader) error {
	cfg := &s.srv.cfg.SMTP
	// go-smtp's read deadline covers one command line; a body may take longer.
	_ = s.conn.Conn().SetReadDeadline(time.Now().Add(cfg.DataTimeout.D()))
	// Waiting for RAM is bounded well inside the data timeout, so the
	// client hears a clean 451 rather than a dropped connection.
	bb := &bodyBuffer{budget: s.srv.mem, deadline: time.Now().Add(min(cfg.DataTimeout.D()/2, 30*time.Second))}
	defer bb.free()
	initial := headRoom + 64<<10
	if s.mail.Size > 0 && s.mail.Size <= int64(cfg.MaxMessageBytes) {
		initial = headRoom + int(s.mail.Size) + 1024 // SIZE= is a hint; allow a little slack
	}
	if !bb.grow(initial) {
		return errResources
	}
	bb.buf = bb.buf[:headRoom]
	for {
		if len(bb.buf) == cap(bb.buf) && !bb.grow(cap(bb.buf)+1) {
			return errResources
		}
		n, err := r.Read(bb.buf[len(bb.buf):cap(bb.buf)])
		bb.buf = bb.buf[:len(bb.buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			var se *smtp.SMTPError
			if errors.As(err, &se) {
				return se // size limit (552) from go-smtp
			}
			return errTimeout
		}
	}
	msg := bb.buf[headRoom:]
	hdr := scanHeader(msg[:headerEnd(msg)])
	if hdr.received >= cfg.MaxReceived {
		s.srv.log.Warn("mail loop", "client", s.ip.String(), "from", s.from, "received", hdr.received)
		return errLoop
	}
	id := s.srv.spool.NewID()
	now := s.srv.opts.Now()
	var prefix bytes.Buffer
	rcpt := ""
	if len(s.rcpts) == 1 {
		rcpt = s.rcpts[0].Addr
	}
	prefix.Write(receivedHeader(s.conn.Hostname(), s.ip.String(), s.srv.cfg.Hostname, id, s.protocol(), rcpt, now))
	if s.kind != kindRelay || s.authUser != "" {
		// Submission fixes up what MUAs leave out (RFC 6409 §8).
		if !hdr.hasMessageID {
			fmt.Fprintf(&prefix, "Message-ID: <%s@%s>\r\n", strings.ToLower(id), s.srv.cfg.Hostname)
		}
		if !hdr.hasDate {
			fmt.Fprintf(&prefix, "Date: %s\r\n", now.Format(time.RFC1123Z))
		}
	}
	body := bb.prepend(prefix.Bytes())
	if err := s.srv.checkSpace(int64(len(body))); err != nil {
		return err
	}
	env := &storage.Envelope{
		ID:         id,
		From:       s.from,
		Recipients: s.rcpts,
		Ret:        string(s.mail.Return),
		EnvID:      s.mail.EnvelopeID,
		ClientIP:   s.ip.String(),
		Helo:       s.conn.Hostname(),
		AuthUser:   s.authUser,
		UTF8:       s.mail.UTF8,
		Body8Bit:   s.mail.Body == smtp.Body8BitMIME || s.mail.Body == smtp.BodyBinaryMIME,
		Received:   now,
	}
	s.srv.opts.BeforePut(env)
	if _, err := s.srv.spool.Put(env, body); err != nil {
		s.srv.log.Error("spool put failed", "client", s.ip.String(), "from", s.from, "err", err)
		if free, ferr := s.srv.spool.FreeBytes(); ferr == nil && free < s.srv.reserve+int64(len(body)) {
			return errNoSpace
		}
		return errLocal
	}
	s.srv.log.Info("queued", "id", id, "client", s.ip.String(), "from", s.from, "rcpts", len(s.rcpts), "size", len(body))
	s.srv.opts.OnQueued(env)
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + id}
}

// protocol is the RFC 3848 "with" keyword for the Received header.
func (s *session) protocol() string {
	p := "ESMTP"
	if s.tls() {
		p += "S"
	}
	if s.authUser != "" {
		p += "A"
	}
	return p
}

// checkSpace refuses new mail while the spool's filesystem is below the
// reserve, or would fall below it by taking `size` more bytes.
func (s *Server) checkSpace(size int64) error {
	free, err := s.spool.FreeBytes()
	if err != nil {
		s.log.Error("spool free space", "err", err)
		return errLocal
	}
	if free-size < s.reserve {
		s.log.Warn("spool space low: refusing mail", "free", free, "reserve", s.reserve, "size", size)
		return errNoSpace
	}
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
