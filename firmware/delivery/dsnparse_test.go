package delivery

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"strings"
	"testing"

	"github.com/mxbox/mxbox/storage"
)

// parsedDSN is a DSN read back the way a client would: MIME structure with
// mime/multipart, status fields with net/textproto.
type parsedDSN struct {
	Header     textproto.MIMEHeader
	ReportType string
	Text       string
	Message    textproto.MIMEHeader   // per-message fields
	Recipients []textproto.MIMEHeader // per-recipient fields
	Returned   string                 // content type of the third part
	Original   []byte
}

func parseDSN(t testing.TB, raw []byte) *parsedDSN {
	t.Helper()
	tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw)))
	h, err := tr.ReadMIMEHeader()
	if err != nil {
		t.Fatalf("DSN header: %v\n%s", err, raw)
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "multipart/report" {
		t.Fatalf("DSN content type %q: %v", h.Get("Content-Type"), err)
	}
	p := &parsedDSN{Header: h, ReportType: params["report-type"]}
	mr := multipart.NewReader(tr.R, params["boundary"])
	for i := 0; ; i++ {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("DSN part %d: %v", i, err)
		}
		body, _ := io.ReadAll(part)
		ct := part.Header.Get("Content-Type")
		switch {
		case i == 0:
			p.Text = string(body)
		case strings.HasPrefix(ct, "message/delivery-status"):
			fr := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
			if p.Message, err = fr.ReadMIMEHeader(); err != nil {
				t.Fatalf("per-message fields: %v", err)
			}
			for {
				rh, err := fr.ReadMIMEHeader()
				if len(rh) > 0 {
					p.Recipients = append(p.Recipients, rh)
				}
				if err != nil {
					break
				}
			}
		default:
			p.Returned = ct
			p.Original = body
		}
	}
	return p
}

// dsnBodies returns the parsed DSNs queued in the spool.
func (f *fixture) parsedDSNs() []*parsedDSN {
	f.t.Helper()
	var out []*parsedDSN
	for _, e := range f.dsns() {
		_, body, err := f.spool.Get(e.ID)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			f.t.Fatal(err)
		}
		out = append(out, parseDSN(f.t, body))
	}
	return out
}
