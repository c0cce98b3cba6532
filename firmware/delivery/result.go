package delivery

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// result is the outcome for one recipient (or for every recipient of a
// transaction): what storage records and what a DSN reports.
type result struct {
	ok     bool
	perm   bool   // permanent failure: DSN, no retry
	status string // enhanced status code, "2.0.0", "4.4.1", "5.1.1"
	// diag is the Diagnostic-Code value without its type: the upstream's
	// reply ("550 5.1.1 no such user") or our own explanation.
	diag string
	// smtpDiag is true when diag is an upstream SMTP reply (type "smtp"),
	// false for our own text (type "x-mxbox").
	smtpDiag bool
	remote   string // host that gave the answer, for Remote-MTA
}

func (r *result) String() string { return r.diag }

func permanent(status, diag string) *result {
	return &result{perm: true, status: status, diag: diag}
}

func temporary(status, diag string) *result {
	return &result{status: status, diag: diag}
}

// fromSMTP turns an upstream reply error into a result. Anything that is not
// an SMTP reply (I/O, timeout, TLS) is temporary: the upstream never said no.
func fromSMTP(err error, remote string) *result {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return &result{status: "4.4.2", diag: fmt.Sprintf("%s: %v", remote, err), remote: remote}
	}
	status := enhanced(se)
	text := strings.ReplaceAll(strings.TrimSpace(se.Message), "\n", " ")
	diag := fmt.Sprintf("%d %s %s", se.Code, status, text)
	r := &result{status: status, diag: diag, smtpDiag: true, remote: remote}
	switch se.Code / 100 {
	case 2:
		r.ok = true
	case 5:
		r.perm = true
	}
	return r
}

// enhanced returns the reply's RFC 3463 code, or the class's generic one
// when the upstream sent none.
func enhanced(se *smtp.SMTPError) string {
	c := se.EnhancedCode
	if c != smtp.NoEnhancedCode && c != smtp.EnhancedCodeNotSet && c[0] >= 2 && c[0] <= 5 {
		return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
	}
	switch se.Code / 100 {
	case 2:
		return "2.0.0"
	case 5:
		return "5.0.0"
	}
	return "4.0.0"
}
