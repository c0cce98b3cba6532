// Package harness builds and runs the real mxbox binary for end-to-end
// tests and benchmarks: it writes a config, starts `mxbox serve` as a child
// process, learns the bound loopback addresses from its log, and can SIGKILL
// and restart it. It also has a minimal line-level SMTP client so tests see
// the exact replies.
package harness

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mxbox/mxbox/firmware/daemon"
	"github.com/mxbox/mxbox/storage"
)

var (
	buildMu sync.Mutex
	builds  = map[string]string{} // GOARCH/GOARM -> binary path
)

// RepoRoot finds the module root from this source file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binary builds ./firmware/cmd/mxbox for this machine once per test process
// and returns its path.
func Binary(t testing.TB) string { return BinaryFor(t, "", "") }

// BinaryFor cross-builds mxbox (CGO_ENABLED=0) for goarch/goarm, once per
// test process; empty goarch means the host.
func BinaryFor(t testing.TB, goarch, goarm string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	key := goarch + "/" + goarm
	if p, ok := builds[key]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "mxbox-bin-")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "mxbox")
	cmd := exec.Command("go", "build", "-o", p, "./firmware/cmd/mxbox")
	cmd.Dir = RepoRoot()
	cmd.Env = os.Environ()
	if goarch != "" {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOARM="+goarm)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", key, err, out)
	}
	builds[key] = p
	return p
}

// Config returns a test config: every listener on 127.0.0.1 port 0, the spool
// in dataDir, delivery to a smarthost nobody listens on, no DNS forwarders.
// extra is appended verbatim (later tables override nothing: pass whole
// sections you need instead of the defaults below via Sections).
func Config(dataDir string, smtpExtra, deliveryExtra, dnsExtra string) string {
	if !strings.Contains(dnsExtra, "listen =") {
		dnsExtra = "listen = \"\"\n" + dnsExtra // resolver off unless the test wants it
	}
	if !strings.Contains(deliveryExtra, "smarthosts =") {
		deliveryExtra = "smarthosts = [\"127.0.0.1:9\"]\n" + deliveryExtra // nothing listens: mail stays queued
	}
	return fmt.Sprintf(`hostname = "mxbox.test"
data_dir = %q
log_level = "info"

[smtp]
listen = "127.0.0.1:0"
submission_listen = "127.0.0.1:0"
%s

[delivery]
%s

[dns]
%s

[web]
listen = ""
`, dataDir, smtpExtra, deliveryExtra, dnsExtra)
}

// Daemon is one running mxbox process.
type Daemon struct {
	t          testing.TB
	Dir        string // data_dir
	ConfigPath string
	cmd        *exec.Cmd
	log        *syncBuffer
	waitErr    chan error
	argv       []string // command that runs mxbox (default: the host binary)
	// Addrs maps service name (smtp, submission, dns, ...) to "127.0.0.1:port".
	Addrs map[string]string
}

var listenRE = regexp.MustCompile(`msg=listening .*service=(\S+) addr=(\S+)`)

// Start writes cfgText to dir/mxbox.toml and starts the daemon.
func Start(t testing.TB, dir, cfgText string) *Daemon {
	t.Helper()
	return StartCmd(t, dir, cfgText, []string{Binary(t)})
}

// StartCmd is Start with the command that runs mxbox given, e.g. an
// emulator and a cross-built binary.
func StartCmd(t testing.TB, dir, cfgText string, argv []string) *Daemon {
	t.Helper()
	d := &Daemon{t: t, Dir: dir, ConfigPath: filepath.Join(dir, "mxbox.toml"), argv: argv}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.ConfigPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	t.Cleanup(func() { d.Kill() })
	return d
}

func (d *Daemon) start() {
	d.t.Helper()
	d.log = &syncBuffer{}
	args := append(append([]string{}, d.argv[1:]...), "serve", "-config", d.ConfigPath)
	d.cmd = exec.Command(d.argv[0], args...)
	d.cmd.Stdout = d.log
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.waitErr = make(chan error, 1)
	go func() { d.waitErr <- d.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if strings.Contains(d.log.String(), "mxbox started") {
			break
		}
		select {
		case err := <-d.waitErr:
			d.t.Fatalf("mxbox exited at start: %v\n%s", err, d.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("mxbox did not start in time:\n%s", d.log.String())
		}
	}
	d.Addrs = map[string]string{}
	for _, m := range listenRE.FindAllStringSubmatch(d.log.String(), -1) {
		d.Addrs[m[1]] = m[2]
	}
}

// PID of the running process.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Log returns everything the daemon printed so far.
func (d *Daemon) Log() string { return d.log.String() }

// Kill sends SIGKILL and waits for the process to go.
func (d *Daemon) Kill() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.waitErr
	d.waitErr <- nil // keep later Kill/Stop calls from blocking
	d.cmd = nil
}

// Stop sends SIGTERM and waits up to timeout; it fails the test if the daemon
// did not exit cleanly.
func (d *Daemon) Stop(timeout time.Duration) {
	d.t.Helper()
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.waitErr:
		d.waitErr <- nil
		d.cmd = nil
		if err != nil {
			d.t.Fatalf("mxbox exit after SIGTERM: %v\n%s", err, d.log.String())
		}
	case <-time.After(timeout):
		d.Kill()
		d.t.Fatalf("mxbox did not stop within %v after SIGTERM\n%s", timeout, d.log.String())
	}
}

// QueueStats asks the running daemon's admin API for the spool counters.
func (d *Daemon) QueueStats(t testing.TB) storage.Stats {
	t.Helper()
	c := daemon.AdminClient(filepath.Join(d.Dir, "admin.sock"))
	resp, err := c.Get("http://mxbox/v1/stats")
	if err != nil {
		t.Fatalf("admin stats: %v", err)
	}
	defer resp.Body.Close()
	var st storage.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("admin stats: %v", err)
	}
	return st
}

// Restart starts the daemon again with the same config (after Kill or Stop).
func (d *Daemon) Restart() {
	d.t.Helper()
	d.start()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Client is a line-level SMTP client: Cmd sends one line and returns the
// complete (possibly multi-line) reply, so tests assert exact codes.
type Client struct {
	Conn net.Conn
	R    *bufio.Reader
}

// Dial connects and reads the greeting.
func Dial(addr string) (*Client, string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, "", err
	}
	cl := &Client{Conn: c, R: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	greet, err := cl.Reply()
	return cl, greet, err
}

// Reply reads one full reply; multi-line replies are joined with "\n".
func (c *Client) Reply() (string, error) {
	var lines []string
	for {
		l, err := c.R.ReadString('\n')
		if err != nil {
			return strings.Join(append(lines, l), "\n"), err
		}
		l = strings.TrimRight(l, "\r\n")
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(lines, "\n"), nil
		}
	}
}

// Cmd sends a line and reads the reply.
func (c *Client) Cmd(line string) (string, error) {
	if _, err := io.WriteString(c.Conn, line+"\r\n"); err != nil {
		return "", err
	}
	return c.Reply()
}

// Send writes raw bytes without reading (pipelining, message bodies).
func (c *Client) Send(s string) error {
	_, err := io.WriteString(c.Conn, s)
	return err
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// StartTLS issues STARTTLS and switches the connection to TLS (any
// certificate: test servers use self-signed ones).
func (c *Client) StartTLS() (string, error) {
	rep, err := c.Cmd("STARTTLS")
	if err != nil || !strings.HasPrefix(rep, "220") {
		return rep, err
	}
	tc := tls.Client(c.Conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		return rep, err
	}
	c.Conn, c.R = tc, bufio.NewReader(tc)
	return rep, nil
}

// SendMail runs one full transaction (EHLO, MAIL, RCPTs, DATA) and returns
// the final reply. body is sent dot-stuffed with CRLF line ends.
func SendMail(addr, from string, to []string, body []byte) (string, error) {
	c, greet, err := Dial(addr)
	if err != nil {
		return greet, err
	}
	defer c.Close()
	if !strings.HasPrefix(greet, "220") {
		return greet, nil
	}
	steps := []string{"EHLO client.test", "MAIL FROM:<" + from + ">"}
	for _, r := range to {
		steps = append(steps, "RCPT TO:<"+r+">")
	}
	steps = append(steps, "DATA")
	for _, s := range steps {
		rep, err := c.Cmd(s)
		if err != nil {
			return rep, err
		}
		if rep[0] != '2' && rep[0] != '3' {
			return rep, nil
		}
	}
	if err := c.Send(string(DotStuff(body)) + ".\r\n"); err != nil {
		return "", err
	}
	rep, err := c.Reply()
	c.Cmd("QUIT")
	return rep, err
}

// DotStuff prepares a CRLF message for DATA: leading dots doubled, a final
// CRLF ensured.
func DotStuff(body []byte) []byte {
	var b bytes.Buffer
	for _, line := range bytes.SplitAfter(body, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if line[0] == '.' {
			b.WriteByte('.')
		}
		b.Write(line)
	}
	if b.Len() > 0 && !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// QueuedID extracts the id from "250 2.0.0 Ok: queued as ID".
func QueuedID(reply string) (string, bool) {
	const p = "250 2.0.0 Ok: queued as "
	if !strings.HasPrefix(reply, p) {
		return "", false
	}
	return strings.TrimSpace(reply[len(p):]), true
}
