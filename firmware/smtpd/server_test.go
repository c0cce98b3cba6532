package smtpd_test

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/firmware/smtpd"
	"github.com/mxbox/mxbox/storage"
	"github.com/mxbox/mxbox/test/harness"
)

type testServer struct {
	srv        *smtpd.Server
	spool      *storage.Spool
	relay      string
	submission string
	queued     chan string
}

// failingSpool wraps the real spool and can make Put fail, as a broken flash would.
type failingSpool struct {
	*storage.Spool
	fail bool
}

func (f *failingSpool) Put(e *storage.Envelope, b []byte) (string, error) {
	if f.fail {
		return "", errors.New("simulated flash write error")
	}
	return f.Spool.Put(e, b)
}

// start runs the real SMTP server on 127.0.0.1 ephemeral ports with a real
// Badger spool. smtpExtra is TOML added to [smtp].
func start(t *testing.T, smtpExtra string) *testServer { return startWith(t, smtpExtra, nil) }

func startWith(t *testing.T, smtpExtra string, wrap func(*storage.Spool) smtpd.Spool) *testServer {
	t.Helper()
	dir := t.TempDir()
	cfg, err := config.Parse("test.toml", []byte(fmt.Sprintf(`hostname = "mx.test"
data_dir = %q
[smtp]
listen = "127.0.0.1:0"
submission_listen = "127.0.0.1:0"
%s
`, dir, smtpExtra)))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sp, err := storage.Open(dir+"/spool", storage.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{spool: sp, queued: make(chan string, 100)}
	var spool smtpd.Spool = sp
	if wrap != nil {
		spool = wrap(sp)
	}
	ts.srv, err = smtpd.New(cfg, spool, smtpd.Options{Logger: log, TLSDir: dir, OnQueued: func(env *storage.Envelope) { ts.queued <- env.ID }})
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.srv.Close(); sp.Close() })
	addrs := ts.srv.Addrs()
	ts.relay, ts.submission = addrs["smtp"].String(), addrs["submission"].String()
	return ts
}

func dial(t *testing.T, addr string) *harness.Client {
	t.Helper()
	c, greet, err := harness.Dial(addr)
	if err != nil || !strings.HasPrefix(greet, "220 ") {
		t.Fatalf("greeting %q: %v", greet, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expect sends cmd and checks the reply starts with want.
func expect(t *testing.T, c *harness.Client, cmd, want string) string {
	t.Helper()
	rep, err := c.Cmd(cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if !strings.HasPrefix(rep, want) {
		t.Fatalf("%s: got %q, want %q...", cmd, rep, want)
	}
	return rep
}

func TestAcceptedMessageIsQueuedAfterCommitWithReceivedHeader(t *testing.T) {
	ts := start(t, "")
	body := []byte("Subject: hi\r\n\r\nhello\r\n..leading dot\r\n")
	rep, err := harness.SendMail(ts.relay, "a@example.org", []string{"b@example.com"}, body)
	id, ok := harness.QueuedID(rep)
	if err != nil || !ok {
		t.Fatalf("reply %q %v", rep, err)
	}
	env, got, err := ts.spool.Get(id)
	if err != nil {
		t.Fatalf("250 given but message %s not in spool: %v", id, err)
	}
	if !strings.HasPrefix(string(got), "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (mxbox) with ESMTP id "+id) {
		t.Fatalf("Received header: %q", got[:120])
	}
	if !strings.HasSuffix(string(got), string(body)) {
		t.Fatalf("body not stored verbatim: %q", got)
	}
	if env.From != "a@example.org" || env.Recipients[0].Addr != "b@example.com" || env.ClientIP != "127.0.0.1" || env.Helo != "client.test" {
		t.Fatalf("envelope %+v", env)
	}
	if q := <-ts.queued; q != id {
		t.Fatalf("OnQueued got %s, want %s", q, id)
	}
}

func TestRelayDeniedFromOutsideNetworks(t *testing.T) {
	ts := start(t, `relay_networks = ["192.0.2.0/24"]
accepted_domains = ["ours.example"]`)
	c := dial(t, ts.relay)
	expect(t, c, "EHLO outside.test", "250")
	expect(t, c, "MAIL FROM:<x@elsewhere.example>", "250")
	expect(t, c, "RCPT TO:<victim@third-party.example>", "554 5.7.1")
	expect(t, c, "RCPT TO:<user@ours.example>", "250")
}

func TestRelayTricksRefusedFromOutsideRelayNetworks(t *testing.T) {
	ts := start(t, `relay_networks = []
accepted_domains = ["ours.example"]`)
	c := dial(t, ts.relay)
	expect(t, c, "EHLO outside.test", "250")
	expect(t, c, "MAIL FROM:<x@elsewhere.example>", "250")
	for _, tc := range []struct{ rcpt, want string }{
		{"<user%third.example@ours.example>", "554 5.7.1"},   // percent hack
		{"<@ours.example:user@third.example>", "554 5.7.1"},  // source route: real destination is third.example
		{`<"user@third.example"@ours.example>`, "554 5.7.1"}, // quoted local part with '@'
		{"<third.example!user@ours.example>", "554 5.7.1"},   // bang path
		{"<user@third.example.>", "554 5.7.1"},               // trailing dot on a foreign domain
		{"<user@ours.example.third.example>", "554 5.7.1"},   // our name as a prefix
		{"<user@[127.0.0.1]>", "554 5.7.1"},                  // address literal
		{"<user@ours.example@third.example>", "554 5.7.1"},   // two '@'
		{"<USER%third.example@OURS.EXAMPLE>", "554 5.7.1"},   // case games around the percent hack
		{"<user@ours..example>", "501 5.1.3"},                // malformed
		{"<user@OURS.Example.>", "250"},                      // ours, with case and trailing dot
		{"<@third.example:user@ours.example>", "250"},        // source route ignored, destination ours
	} {
		rep, err := c.Cmd("RCPT TO:" + tc.rcpt)
		if err != nil || !strings.HasPrefix(rep, tc.want) {
			t.Errorf("RCPT TO:%s = %q, want %s", tc.rcpt, rep, tc.want)
		}
	}
}

func TestTrustedClientMayRelayAnywhere(t *testing.T) {
	ts := start(t, `relay_networks = ["127.0.0.0/8"]`)
	c := dial(t, ts.relay)
	expect(t, c, "EHLO inside.test", "250")
	expect(t, c, "MAIL FROM:<x@inside.example>", "250")
	expect(t, c, "RCPT TO:<someone@anywhere.example>", "250")
}

func usersConfig(t *testing.T) string {
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`relay_networks = []
auth_fail_limit = 3
[[smtp.users]]
name = "alice"
password_hash = %q`, h)
}

func plain(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

func TestSubmissionRequiresAuthAndAuthRequiresTLS(t *testing.T) {
	ts := start(t, usersConfig(t))
	c := dial(t, ts.submission)
	rep := expect(t, c, "EHLO mua.test", "250")
	if strings.Contains(rep, "AUTH") {
		t.Fatalf("AUTH advertised before TLS: %q", rep)
	}
	expect(t, c, "MAIL FROM:<alice@ours.example>", "530 5.7.0")
	expect(t, c, "AUTH PLAIN "+plain("alice", "s3cret"), "523 5.7.10")
	if rep, err := c.StartTLS(); err != nil {
		t.Fatalf("STARTTLS: %q %v", rep, err)
	}
	rep = expect(t, c, "EHLO mua.test", "250")
	if !strings.Contains(rep, "AUTH PLAIN LOGIN") {
		t.Fatalf("AUTH not advertised after TLS: %q", rep)
	}
	expect(t, c, "MAIL FROM:<alice@ours.example>", "530 5.7.0")
	expect(t, c, "AUTH PLAIN "+plain("alice", "wrong"), "535 5.7.8")
	expect(t, c, "AUTH PLAIN "+plain("alice", "s3cret"), "235")
	expect(t, c, "MAIL FROM:<alice@ours.example>", "250")
	expect(t, c, "RCPT TO:<bob@anywhere.example>", "250") // authenticated: may relay
	expect(t, c, "DATA", "354")
	c.Send("Subject: no id or date\r\n\r\nbody\r\n.\r\n")
	rep, _ = c.Reply()
	id, ok := harness.QueuedID(rep)
	if !ok {
		t.Fatalf("DATA: %q", rep)
	}
	env, body, _ := ts.spool.Get(id)
	if env.AuthUser != "alice" || !strings.Contains(string(body), "with ESMTPSA id") ||
		!strings.Contains(string(body), "\r\nMessage-ID: <") || !strings.Contains(string(body), "\r\nDate: ") {
		t.Fatalf("submission fix-ups missing: auth=%q\n%s", env.AuthUser, body)
	}
}

func TestAuthLoginAndThrottle(t *testing.T) {
	ts := start(t, usersConfig(t))
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	c := dial(t, ts.submission)
	expect(t, c, "EHLO mua.test", "250")
	c.StartTLS()
	expect(t, c, "EHLO mua.test", "250")
	expect(t, c, "AUTH LOGIN", "334 "+b64("Username:"))
	expect(t, c, b64("alice"), "334 "+b64("Password:"))
	expect(t, c, b64("s3cret"), "235")

	// Three failures from this address, then even the right password is refused.
	for i := 0; i < 3; i++ {
		c := dial(t, ts.submission)
		expect(t, c, "EHLO mua.test", "250")
		c.StartTLS()
		expect(t, c, "EHLO mua.test", "250")
		expect(t, c, "AUTH PLAIN "+plain("alice", fmt.Sprint("guess", i)), "535")
	}
	c = dial(t, ts.submission)
	expect(t, c, "EHLO mua.test", "250")
	c.StartTLS()
	expect(t, c, "EHLO mua.test", "250")
	expect(t, c, "AUTH PLAIN "+plain("alice", "s3cret"), "454 4.7.0")
}

func TestSizeLimitAdvertisedAndEnforced(t *testing.T) {
	ts := start(t, `max_message_bytes = "2k"`)
	c := dial(t, ts.relay)
	if rep := expect(t, c, "EHLO c.test", "250"); !strings.Contains(rep, "SIZE 2048") {
		t.Fatalf("SIZE not advertised: %q", rep)
	}
	expect(t, c, "MAIL FROM:<a@example.org> SIZE=5000", "552")
	expect(t, c, "MAIL FROM:<a@example.org>", "250")
	expect(t, c, "RCPT TO:<b@example.com>", "250")
	expect(t, c, "DATA", "354")
	c.Send("Subject: big\r\n\r\n" + strings.Repeat("0123456789012345678901234567890123456789\r\n", 100) + ".\r\n")
	if rep, _ := c.Reply(); !strings.HasPrefix(rep, "552") {
		t.Fatalf("oversized DATA: %q", rep)
	}
	if n := ts.spool.Stats().Messages; n != 0 {
		t.Fatalf("oversized message stored: %d", n)
	}
}

func TestTooManyRecipients(t *testing.T) {
	ts := start(t, `max_recipients = 3`)
	c := dial(t, ts.relay)
	expect(t, c, "EHLO c.test", "250")
	expect(t, c, "MAIL FROM:<a@example.org>", "250")
	for i := 0; i < 3; i++ {
		expect(t, c, fmt.Sprintf("RCPT TO:<r%d@example.com>", i), "250")
	}
	expect(t, c, "RCPT TO:<r4@example.com>", "452")
}

func TestPipelinedSession(t *testing.T) {
	ts := start(t, "")
	c := dial(t, ts.relay)
	if rep := expect(t, c, "EHLO c.test", "250"); !strings.Contains(rep, "PIPELINING") {
		t.Fatalf("PIPELINING not advertised: %q", rep)
	}
	// One write with the whole envelope, then the body, as RFC 2920 allows.
	c.Send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
	for _, want := range []string{"250", "250", "250", "354"} {
		if rep, err := c.Reply(); err != nil || !strings.HasPrefix(rep, want) {
			t.Fatalf("pipelined reply %q, want %s (%v)", rep, want, err)
		}
	}
	c.Send("Subject: p\r\n\r\nx\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n")
	for _, want := range []string{"250 2.0.0 Ok: queued as", "250", "250", "354"} {
		if rep, err := c.Reply(); err != nil || !strings.HasPrefix(rep, want) {
			t.Fatalf("pipelined reply %q, want %s (%v)", rep, want, err)
		}
	}
	c.Send("Subject: q\r\n\r\ny\r\n.\r\n")
	if rep, _ := c.Reply(); !strings.HasPrefix(rep, "250 2.0.0 Ok: queued as") {
		t.Fatalf("second message: %q", rep)
	}
	if n := ts.spool.Stats().Messages; n != 2 {
		t.Fatalf("%d messages queued, want 2", n)
	}
}

func TestChunking(t *testing.T) {
	ts := start(t, "")
	c := dial(t, ts.relay)
	if rep := expect(t, c, "EHLO c.test", "250"); !strings.Contains(rep, "CHUNKING") {
		t.Fatalf("CHUNKING not advertised: %q", rep)
	}
	expect(t, c, "MAIL FROM:<a@example.org>", "250")
	expect(t, c, "RCPT TO:<b@example.com>", "250")
	part1, part2 := "Subject: bdat\r\n\r\nfirst ", "chunk\r\n.not stuffed\r\n"
	c.Send(fmt.Sprintf("BDAT %d\r\n%s", len(part1), part1))
	if rep, _ := c.Reply(); !strings.HasPrefix(rep, "250") {
		t.Fatalf("BDAT 1: %q", rep)
	}
	c.Send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(part2), part2))
	rep, _ := c.Reply()
	id, ok := harness.QueuedID(rep)
	if !ok {
		t.Fatalf("BDAT LAST: %q", rep)
	}
	_, body, _ := ts.spool.Get(id)
	if !strings.HasSuffix(string(body), part1+part2) {
		t.Fatalf("BDAT body: %q", body)
	}
}

func TestSMTPUTF8Address(t *testing.T) {
	ts := start(t, "")
	c := dial(t, ts.relay)
	if rep := expect(t, c, "EHLO c.test", "250"); !strings.Contains(rep, "SMTPUTF8") {
		t.Fatalf("SMTPUTF8 not advertised: %q", rep)
	}
	expect(t, c, "MAIL FROM:<jürgen@bücher.example>", "553 5.6.7") // without SMTPUTF8
	expect(t, c, "MAIL FROM:<jürgen@bücher.example> SMTPUTF8", "250")
	expect(t, c, "RCPT TO:<δοκιμή@παράδειγμα.example>", "250")
	expect(t, c, "DATA", "354")
	c.Send("Subject: ünïcode\r\n\r\nok\r\n.\r\n")
	rep, _ := c.Reply()
	id, ok := harness.QueuedID(rep)
	if !ok {
		t.Fatalf("DATA: %q", rep)
	}
	env, _ := ts.spool.Envelope(id)
	if !env.UTF8 || env.From != "jürgen@bücher.example" || env.Recipients[0].Addr != "δοκιμή@παράδειγμα.example" {
		t.Fatalf("envelope %+v", env)
	}
}

func TestMailLoopRejected(t *testing.T) {
	ts := start(t, `max_received_headers = 5`)
	hdr := strings.Repeat("Received: from a by b; Thu, 3 Dec 2026 10:00:00 +0000\r\n", 5)
	rep, _ := harness.SendMail(ts.relay, "a@example.org", []string{"b@example.com"}, []byte(hdr+"Subject: loop\r\n\r\nx\r\n"))
	if !strings.HasPrefix(rep, "554 5.4.6") {
		t.Fatalf("looping message: %q", rep)
	}
	hdr = strings.Repeat("Received: from a by b; Thu, 3 Dec 2026 10:00:00 +0000\r\n", 4)
	rep, _ = harness.SendMail(ts.relay, "a@example.org", []string{"b@example.com"}, []byte(hdr+"Subject: ok\r\n\r\nx\r\n"))
	if !strings.HasPrefix(rep, "250") {
		t.Fatalf("message under the hop limit: %q", rep)
	}
}

func TestLowSpoolSpaceIs452NotBounce(t *testing.T) {
	ts := start(t, `spool_reserve = "1000000G"`)
	c := dial(t, ts.relay)
	expect(t, c, "EHLO c.test", "250")
	expect(t, c, "MAIL FROM:<a@example.org>", "452 4.3.1")
}

func TestStorageFailureIs451NotBounce(t *testing.T) {
	var fs *failingSpool
	ts := startWith(t, "", func(s *storage.Spool) smtpd.Spool { fs = &failingSpool{Spool: s, fail: true}; return fs })
	rep, _ := harness.SendMail(ts.relay, "a@example.org", []string{"b@example.com"}, []byte("Subject: x\r\n\r\ny\r\n"))
	if !strings.HasPrefix(rep, "451 4.3.0") {
		t.Fatalf("storage failure answered %q, want 451 4.3.0", rep)
	}
}

func TestConnectionLimitPerIP(t *testing.T) {
	ts := start(t, `max_connections_per_ip = 2`)
	dial(t, ts.relay)
	dial(t, ts.relay)
	c, greet, err := harness.Dial(ts.relay)
	if err == nil {
		defer c.Close()
	}
	if !strings.HasPrefix(greet, "421 4.7.0") {
		t.Fatalf("third connection from one address: %q %v", greet, err)
	}
}

func TestExtensionsAndDSNParametersKept(t *testing.T) {
	ts := start(t, "")
	c := dial(t, ts.relay)
	rep := expect(t, c, "EHLO c.test", "250")
	for _, ext := range []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN", "SIZE", "STARTTLS"} {
		if !strings.Contains(rep, ext) {
			t.Errorf("EHLO does not advertise %s: %q", ext, rep)
		}
	}
	expect(t, c, "MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ314159 BODY=8BITMIME", "250")
	expect(t, c, "RCPT TO:<b@example.com> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.com", "250")
	expect(t, c, "DATA", "354")
	c.Send("Subject: dsn\r\n\r\n\xc3\xa9t\xc3\xa9\r\n.\r\n")
	rep, _ = c.Reply()
	id, ok := harness.QueuedID(rep)
	if !ok {
		t.Fatalf("DATA: %q", rep)
	}
	env, _ := ts.spool.Envelope(id)
	r := env.Recipients[0]
	if env.Ret != "HDRS" || env.EnvID != "QQ314159" || !env.Body8Bit || strings.Join(r.Notify, ",") != "FAILURE,DELAY" || !strings.EqualFold(r.ORcpt, "rfc822;b@example.com") {
		t.Fatalf("DSN parameters not kept: %+v %+v", env, r)
	}
}

func TestImplicitTLSListener(t *testing.T) {
	ts := start(t, `tls_listen = "127.0.0.1:0"`)
	addr := ts.srv.Addrs()["submissions"].String()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	c := &harness.Client{Conn: conn, R: bufio.NewReader(conn)}
	defer c.Close()
	if greet, _ := c.Reply(); !strings.HasPrefix(greet, "220 ") {
		t.Fatalf("greeting over implicit TLS: %q", greet)
	}
	if rep := expect(t, c, "EHLO mua.test", "250"); !strings.Contains(rep, "AUTH PLAIN LOGIN") || strings.Contains(rep, "STARTTLS") {
		t.Fatalf("implicit TLS EHLO: %q", rep)
	}
	expect(t, c, "MAIL FROM:<a@example.org>", "530 5.7.0") // submission rules: AUTH first
}

func TestOverlongLineRefused(t *testing.T) {
	ts := start(t, "")
	c := dial(t, ts.relay)
	expect(t, c, "EHLO c.test", "250")
	expect(t, c, "MAIL FROM:<"+strings.Repeat("a", 5000)+"@example.org>", "500 5.4.0")
}

// TestBodyMemoryBudgetIsTemporaryFailure: while one session's body fills the
// RAM budget, another gets 451 4.3.0 (retry later) instead of growing memory
// without bound; once the first is on flash, mail flows again.
func TestBodyMemoryBudgetIsTemporaryFailure(t *testing.T) {
	ts := start(t, `max_message_bytes = "100k"
data_memory = "160k"
data_timeout = "3s"`)
	a := dial(t, ts.relay)
	for _, cmd := range []string{"EHLO a.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>"} {
		expect(t, a, cmd, "250")
	}
	expect(t, a, "DATA", "354")
	line := strings.Repeat("x", 78) + "\r\n"
	a.Send("Subject: big\r\n\r\n" + strings.Repeat(line, 90<<10/len(line)))
	time.Sleep(200 * time.Millisecond) // let the server take the budget for what it read

	rep, _ := harness.SendMail(ts.relay, "c@example.org", []string{"d@example.com"}, []byte("Subject: small\r\n\r\nx\r\n"))
	if !strings.HasPrefix(rep, "451 4.3.0") {
		t.Fatalf("second body while the budget is used up: %q, want 451 4.3.0", rep)
	}
	a.Send(".\r\n")
	if rep, _ := a.Reply(); !strings.HasPrefix(rep, "250 2.0.0 Ok: queued") {
		t.Fatalf("first message: %q", rep)
	}
	rep, _ = harness.SendMail(ts.relay, "c@example.org", []string{"d@example.com"}, []byte("Subject: small\r\n\r\nx\r\n"))
	if !strings.HasPrefix(rep, "250 2.0.0 Ok: queued") {
		t.Fatalf("after the budget was released: %q", rep)
	}
}
