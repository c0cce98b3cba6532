package delivery

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"mime"
	"strings"
	"time"

	"github.com/mxbox/mxbox/storage"
)

// dsnKind is the Action of a delivery status notification.
type dsnKind string

const (
	dsnFailed  dsnKind = "failed"
	dsnDelayed dsnKind = "delayed"
)

// dsnRcpt is one recipient reported in a DSN.
type dsnRcpt struct {
	rc  *storage.Recipient
	res *result
}

// wantsDSN applies the recipient's NOTIFY (RFC 3461 §4.1): none given means
// FAILURE,DELAY; NEVER means none.
func wantsDSN(rc *storage.Recipient, kind dsnKind) bool {
	if len(rc.Notify) == 0 {
		return true
	}
	want := "FAILURE"
	if kind == dsnDelayed {
		want = "DELAY"
	}
	for _, n := range rc.Notify {
		if strings.EqualFold(n, want) {
			return true
		}
	}
	return false
}

// maxFullReturn caps the original message returned with RET=FULL: a bounce
// of a 25 MB message would double the flash it takes.
const maxFullReturn = 1 << 20

// buildDSN writes an RFC 3464 multipart/report for env to its sender.
func buildDSN(hostname string, env *storage.Envelope, body []byte, kind dsnKind, rcpts []dsnRcpt, now time.Time, retryUntil time.Time) []byte {
	var b bytes.Buffer
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	boundary := "mxbox-" + hex.EncodeToString(rnd[:])
	crlf := func(format string, args ...any) { fmt.Fprintf(&b, format+"\r\n", args...) }

	subject := "Undelivered Mail Returned to Sender"
	if kind == dsnDelayed {
		subject = "Delayed Mail (still being retried)"
	}
	crlf("From: Mail Delivery System <MAILER-DAEMON@%s>", hostname)
	crlf("To: <%s>", env.From)
	crlf("Subject: %s", subject)
	crlf("Date: %s", now.Format(time.RFC1123Z))
	crlf("Message-ID: <%s.%s@%s>", env.ID, hex.EncodeToString(rnd[:4]), hostname)
	crlf("Auto-Submitted: auto-replied")
	crlf("MIME-Version: 1.0")
	crlf("Content-Type: %s", mime.FormatMediaType("multipart/report",
		map[string]string{"report-type": "delivery-status", "boundary": boundary}))
	crlf("")
	crlf("This is a MIME-encapsulated delivery status notification.")
	crlf("")

	// Human-readable part.
	crlf("--%s", boundary)
	crlf("Content-Type: text/plain; charset=us-ascii")
	crlf("")
	crlf("This is the mail system at host %s.", hostname)
	crlf("")
	if kind == dsnFailed {
		crlf("I'm sorry to have to inform you that your message could not be")
		crlf("delivered to one or more recipients. It's attached below.")
	} else {
		crlf("Your message could not be delivered yet to one or more recipients.")
		crlf("It will be retried until %s; you need not resend it.", retryUntil.UTC().Format(time.RFC1123Z))
	}
	crlf("")
	for _, r := range rcpts {
		crlf("<%s>: %s", r.rc.Addr, asciiLine(r.res.diag))
	}
	crlf("")

	// Machine-readable part (RFC 3464 §2).
	crlf("--%s", boundary)
	crlf("Content-Type: message/delivery-status")
	crlf("")
	crlf("Reporting-MTA: dns; %s", hostname)
	crlf("X-Mxbox-Queue-ID: %s", env.ID)
	if env.EnvID != "" {
		crlf("Original-Envelope-Id: %s", asciiLine(env.EnvID))
	}
	crlf("Arrival-Date: %s", env.Received.Format(time.RFC1123Z))
	for _, r := range rcpts {
		crlf("")
		crlf("Final-Recipient: rfc822; %s", r.rc.Addr)
		if r.rc.ORcpt != "" {
			typ, addr, ok := strings.Cut(r.rc.ORcpt, ";")
			if ok {
				crlf("Original-Recipient: %s; %s", strings.TrimSpace(typ), strings.TrimSpace(addr))
			}
		}
		crlf("Action: %s", kind)
		crlf("Status: %s", r.res.status)
		if r.res.remote != "" {
			crlf("Remote-MTA: dns; %s", r.res.remote)
		}
		typ := "x-mxbox"
		if r.res.smtpDiag {
			typ = "smtp"
		}
		crlf("Diagnostic-Code: %s; %s", typ, asciiLine(r.res.diag))
		crlf("Last-Attempt-Date: %s", now.Format(time.RFC1123Z))
		if kind == dsnDelayed {
			crlf("Will-Retry-Until: %s", retryUntil.Format(time.RFC1123Z))
		}
	}
	crlf("")

	// The original: full message when RET=FULL asked and it is not huge,
	// headers otherwise (RFC 3461 §4.3).
	crlf("--%s", boundary)
	if strings.EqualFold(env.Ret, "FULL") && len(body) <= maxFullReturn {
		crlf("Content-Type: message/rfc822")
		crlf("")
		b.Write(body)
		if !bytes.HasSuffix(body, []byte("\r\n")) {
			crlf("")
		}
	} else {
		crlf("Content-Type: text/rfc822-headers")
		crlf("")
		b.Write(headerPart(body))
	}
	crlf("")
	crlf("--%s--", boundary)
	return b.Bytes()
}

// headerPart returns the header block of a message, ending with CRLF.
func headerPart(body []byte) []byte {
	if i := bytes.Index(body, []byte("\r\n\r\n")); i >= 0 {
		return body[:i+2]
	}
	if i := bytes.Index(body, []byte("\n\n")); i >= 0 {
		return body[:i+1]
	}
	return body
}

// asciiLine keeps a diagnostic on one printable-ASCII line: DSN fields are
// headers, and upstream text may carry anything.
func asciiLine(s string) string {
	var sb strings.Builder
	for _, r := range s {
		switch {
		case r == '\r' || r == '\n' || r == '\t':
			sb.WriteByte(' ')
		case r < 0x20 || r > 0x7e:
			sb.WriteByte('?')
		default:
			sb.WriteRune(r)
		}
	}
	return sb.String()
}
