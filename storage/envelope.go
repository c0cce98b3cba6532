package storage

import (
	"crypto/rand"
	"encoding/binary"
	"strings"
	"sync"
	"time"
)

// RcptState is where one recipient stands.
type RcptState uint8

const (
	// RcptPending recipients still need delivery.
	RcptPending RcptState = iota
	// RcptDelivered recipients got a 2xx from the next hop.
	RcptDelivered
	// RcptFailed recipients failed permanently; a DSN is due or was sent.
	RcptFailed
)

func (s RcptState) String() string {
	switch s {
	case RcptPending:
		return "pending"
	case RcptDelivered:
		return "delivered"
	case RcptFailed:
		return "failed"
	}
	return "unknown"
}

// Recipient is one envelope recipient with its own delivery state.
type Recipient struct {
	Addr string `json:"addr"`
	// DSN parameters (RFC 3461) kept for the DSNs delivery may send.
	Notify []string `json:"notify,omitempty"`
	ORcpt  string   `json:"orcpt,omitempty"`

	State     RcptState `json:"state"`
	Status    string    `json:"status,omitempty"` // enhanced status code of the last result, e.g. "4.4.1"
	LastError string    `json:"last_error,omitempty"`
	Attempts  int       `json:"attempts,omitempty"`
	Updated   time.Time `json:"updated,omitzero"`
	// DSNSent marks a recipient whose failure notice has been queued.
	DSNSent bool `json:"dsn_sent,omitempty"`
}

// Envelope is everything about a queued message except its body.
type Envelope struct {
	ID         string      `json:"id"`
	From       string      `json:"from"` // "" is the null sender (DSNs)
	Recipients []Recipient `json:"rcpts"`

	// DSN parameters of MAIL FROM (RFC 3461).
	Ret   string `json:"ret,omitempty"` // "FULL" or "HDRS"
	EnvID string `json:"envid,omitempty"`

	ClientIP string    `json:"client_ip,omitempty"`
	Helo     string    `json:"helo,omitempty"`
	AuthUser string    `json:"auth,omitempty"`
	UTF8     bool      `json:"utf8,omitempty"`
	Body8Bit bool      `json:"8bit,omitempty"`
	Received time.Time `json:"received"`
	Size     int64     `json:"size"`

	Attempts    int       `json:"attempts,omitempty"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
	// Held messages have no schedule entry: delivery ignores them until released.
	Held bool `json:"held,omitempty"`
	// DelayWarned records that the delay-warning DSN was sent.
	DelayWarned bool `json:"delay_warned,omitempty"`
	// NextHop is the route delivery last chose; used for flush-by-hop and stats.
	NextHop string `json:"next_hop,omitempty"`

	// chunks is how many body keys the message has; stored so Delete needs no scan.
	Chunks int `json:"chunks"`
}

// Pending returns the recipients that still need delivery.
func (e *Envelope) Pending() []*Recipient {
	var out []*Recipient
	for i := range e.Recipients {
		if e.Recipients[i].State == RcptPending {
			out = append(out, &e.Recipients[i])
		}
	}
	return out
}

// Done reports whether no recipient is pending any more.
func (e *Envelope) Done() bool {
	for i := range e.Recipients {
		if e.Recipients[i].State == RcptPending {
			return false
		}
	}
	return true
}

// idGen makes queue ids that sort by creation time: 44 bits of Unix
// milliseconds (good until the year 2527) then a 20-bit counter, written as 13
// digits of an ASCII-ordered base32 alphabet, so the byte order of ids is time
// order and Badger keeps the queue in arrival order.
type idGen struct {
	mu   sync.Mutex
	last uint64 // ms<<20 | counter of the previous id
}

const (
	idAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	idLen      = 13
	idCounter  = 20
)

func newIDGen() *idGen {
	var b [4]byte
	_, _ = rand.Read(b[:])
	// A random counter start makes ids from two runs in the same millisecond
	// (a restart after a crash) unlikely to meet; Put still checks.
	return &idGen{last: uint64(binary.BigEndian.Uint32(b[:])) & (1<<(idCounter-1) - 1)}
}

func (g *idGen) next(now time.Time) string {
	g.mu.Lock()
	v := uint64(now.UnixMilli()) << idCounter
	if v <= g.last {
		// Same millisecond, or the clock went back: count on from the last id
		// so ids stay unique and increasing within this process.
		v = g.last + 1
	} else {
		v |= g.last & (1<<(idCounter-1) - 1)
	}
	g.last = v
	g.mu.Unlock()
	return encodeID(v)
}

func encodeID(v uint64) string {
	var out [idLen]byte
	for i := idLen - 1; i >= 0; i-- {
		out[i] = idAlphabet[v&31]
		v >>= 5
	}
	return string(out[:])
}

// IDTime returns the creation time encoded in a queue id.
func IDTime(id string) (time.Time, bool) {
	if !ValidID(id) {
		return time.Time{}, false
	}
	var v uint64
	for i := 0; i < len(id); i++ {
		v = v<<5 | uint64(strings.IndexByte(idAlphabet, id[i]))
	}
	return time.UnixMilli(int64(v >> idCounter)), true
}

// ValidID reports whether s looks like a queue id (for admin input).
func ValidID(s string) bool {
	if len(s) != idLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(idAlphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}
