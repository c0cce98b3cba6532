package smtpd

import (
	"bytes"
	"fmt"
	"time"
)

// headerEnd returns the length of the header section including the blank
// line, or len(msg) when the message has no body separator.
func headerEnd(msg []byte) int {
	if bytes.HasPrefix(msg, []byte("\r\n")) {
		return 2
	}
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return i + 4
	}
	if i := bytes.Index(msg, []byte("\n\n")); i >= 0 {
		return i + 2
	}
	return len(msg)
}

// headerInfo reports what the DATA handler needs from the header section:
// the Received count (loop detection) and whether Message-ID and Date exist.
type headerInfo struct {
	received     int
	hasMessageID bool
	hasDate      bool
}

func scanHeader(hdr []byte) headerInfo {
	var h headerInfo
	for len(hdr) > 0 {
		line := hdr
		if i := bytes.IndexByte(hdr, '\n'); i >= 0 {
			line, hdr = hdr[:i], hdr[i+1:]
		} else {
			hdr = nil
		}
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue // continuation or separator
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := bytes.TrimRight(line[:colon], " \t")
		switch {
		case bytes.EqualFold(name, []byte("Received")):
			h.received++
		case bytes.EqualFold(name, []byte("Message-ID")):
			h.hasMessageID = true
		case bytes.EqualFold(name, []byte("Date")):
			h.hasDate = true
		}
	}
	return h
}

// receivedHeader is the trace header we prepend (RFC 5321 §4.4). The
// protocol keyword follows RFC 3848: ESMTP, +S for TLS, +A for AUTH.
func receivedHeader(helo, clientIP, hostname, id, proto, rcpt string, now time.Time) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Received: from %s ([%s])\r\n\tby %s (mxbox) with %s id %s", sanitize(helo), clientIP, hostname, proto, id)
	if rcpt != "" {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", sanitize(rcpt))
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", now.Format(time.RFC1123Z))
	return b.Bytes()
}

// sanitize keeps client-supplied text from breaking the header structure.
func sanitize(s string) string {
	if len(s) > 255 {
		s = s[:255]
	}
	return string(bytes.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '(' || r == ')' || r == ';' {
			return '?'
		}
		return r
	}, []byte(s)))
}
