package resolver

import (
	"encoding/binary"
	"errors"
	"time"
)

// The packet fast path works on wire bytes: a cache hit is answered by
// copying the cached packed answer behind the client's own header and
// question and patching TTLs in place, with no dns.Msg, no allocation and
// no compression work. Everything unusual goes to the dns.Msg slow path.

const (
	headerLen   = 12
	ednsSize    = 1232 // advertised and used upstream (DNS flag day 2020)
	flagQR      = 1 << 15
	flagAA      = 1 << 10
	flagTC      = 1 << 9
	flagRD      = 1 << 8
	flagRA      = 1 << 7
	flagCD      = 1 << 4
	typeOPT     = 41
	optDO       = 1 << 15
	maxNameWire = 255
	staleTTL    = 30 // RFC 8767 §4 recommends 30 s for stale answers
	edeStale    = 3  // RFC 8914 Extended DNS Error "Stale Answer"
	staleText   = "Stale Answer"
	maxUDPReply = 65535
)

var errBadPacket = errors.New("malformed DNS message")

// query is a parsed client question. qname aliases the packet.
type query struct {
	id          uint16
	flags       uint16
	qname       []byte // wire form as sent (client's letter case)
	qtype       uint16
	qclass      uint16
	qEnd        int // offset just past the question
	edns        bool
	udpSize     int
	do          bool
	ednsVersion uint8
}

// parseQuery parses the header, the single question and an optional OPT
// record. rcode > 0 means "answer with this rcode" (FORMERR, NOTIMP);
// ok=false with rcode 0 means "drop silently" (garbage or a response packet,
// never answered so we cannot be used for reflection loops).
func parseQuery(p []byte) (q query, rcode int, ok bool) {
	if len(p) < headerLen {
		return q, 0, false
	}
	q.id = binary.BigEndian.Uint16(p)
	q.flags = binary.BigEndian.Uint16(p[2:])
	if q.flags&flagQR != 0 {
		return q, 0, false
	}
	qd := binary.BigEndian.Uint16(p[4:])
	an := binary.BigEndian.Uint16(p[6:])
	ns := binary.BigEndian.Uint16(p[8:])
	ar := binary.BigEndian.Uint16(p[10:])
	if (q.flags>>11)&0xF != 0 {
		return q, 4, true // NOTIMP: only QUERY
	}
	if qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return q, 1, true // FORMERR
	}
	off := headerLen
	for {
		if off >= len(p) {
			return q, 1, true
		}
		l := int(p[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 || off+1+l > len(p) { // includes compression pointers
			return q, 1, true
		}
		off += 1 + l
		if off-headerLen > maxNameWire {
			return q, 1, true
		}
	}
	q.qname = p[headerLen:off]
	if off+4 > len(p) {
		return q, 1, true
	}
	q.qtype = binary.BigEndian.Uint16(p[off:])
	q.qclass = binary.BigEndian.Uint16(p[off+2:])
	off += 4
	q.qEnd = off
	q.udpSize = 512
	if ar == 1 {
		// OPT: root name, type 41, class = UDP size, TTL = ext-rcode,
		// version, flags; then RDATA (options we ignore).
		if off+11 > len(p) || p[off] != 0 || binary.BigEndian.Uint16(p[off+1:]) != typeOPT {
			return q, 1, true
		}
		q.edns = true
		q.udpSize = int(binary.BigEndian.Uint16(p[off+3:]))
		if q.udpSize < 512 {
			q.udpSize = 512
		}
		q.ednsVersion = p[off+6]
		q.do = binary.BigEndian.Uint16(p[off+7:])&optDO != 0
		rdlen := int(binary.BigEndian.Uint16(p[off+9:]))
		if off+11+rdlen > len(p) {
			return q, 1, true
		}
	}
	return q, 0, true
}

// appendKey appends the cache key of q: lower-case wire name, type, class,
// DO bit. Case-folding here is what lets 0x20-randomized queries share.
func appendKey(dst []byte, qname []byte, qtype, qclass uint16, do bool) []byte {
	for _, c := range qname {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	dst = binary.BigEndian.AppendUint16(dst, qtype)
	dst = binary.BigEndian.AppendUint16(dst, qclass)
	if do {
		return append(dst, 1)
	}
	return append(dst, 0)
}

// walk validates a packed cached answer (exactly one question, whole RRs,
// no OPT, nothing trailing) and returns the end of its question. The fast
// path relies on this having been checked once, at store or load time.
func walk(msg []byte) (qEnd int, err error) {
	if len(msg) < headerLen || len(msg) > maxUDPReply {
		return 0, errBadPacket
	}
	if binary.BigEndian.Uint16(msg[4:]) != 1 {
		return 0, errBadPacket
	}
	n := 0
	for i := range 3 {
		n += int(binary.BigEndian.Uint16(msg[6+2*i:]))
	}
	off, err := skipName(msg, headerLen)
	if err != nil || off+4 > len(msg) {
		return 0, errBadPacket
	}
	off += 4
	qEnd = off
	for range n {
		off, err = skipName(msg, off)
		if err != nil || off+10 > len(msg) {
			return 0, errBadPacket
		}
		if binary.BigEndian.Uint16(msg[off:]) == typeOPT {
			return 0, errBadPacket // cached answers never carry OPT
		}
		off += 10 + int(binary.BigEndian.Uint16(msg[off+8:]))
		if off > len(msg) {
			return 0, errBadPacket
		}
	}
	if off != len(msg) {
		return 0, errBadPacket
	}
	return qEnd, nil
}

func skipName(msg []byte, off int) (int, error) {
	for hops := 0; hops < 128; hops++ {
		if off >= len(msg) {
			return 0, errBadPacket
		}
		c := int(msg[off])
		switch {
		case c == 0:
			return off + 1, nil
		case c&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return 0, errBadPacket
			}
			return off + 2, nil
		case c&0xC0 != 0:
			return 0, errBadPacket
		}
		off += 1 + c
	}
	return 0, errBadPacket
}

// optLen is the size of the OPT record we append, with or without EDE.
func optLen(stale bool) int {
	if stale {
		return 11 + 4 + 2 + len(staleText)
	}
	return 11
}

func appendOPT(dst []byte, do, stale bool, extRcode uint8) []byte {
	dst = append(dst, 0)
	dst = binary.BigEndian.AppendUint16(dst, typeOPT)
	dst = binary.BigEndian.AppendUint16(dst, ednsSize)
	dst = append(dst, extRcode, 0)
	var fl uint16
	if do {
		fl = optDO
	}
	dst = binary.BigEndian.AppendUint16(dst, fl)
	if !stale {
		return binary.BigEndian.AppendUint16(dst, 0)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(4+2+len(staleText)))
	dst = binary.BigEndian.AppendUint16(dst, 15) // EDE option code
	dst = binary.BigEndian.AppendUint16(dst, uint16(2+len(staleText)))
	dst = binary.BigEndian.AppendUint16(dst, edeStale)
	return append(dst, staleText...)
}

// appendAnswer writes the reply to q (whose packet is p) from cached entry e
// into dst. TTLs count down from the store time; a stale answer carries TTL
// 30 and EDE 3. limit is the client's buffer: if the answer does not fit, a
// prefix of whole RRs is sent with TC set (compression pointers only point
// backwards, so any RR prefix of a packed message is valid).
func appendAnswer(dst []byte, p []byte, q *query, e *entry, now time.Time, stale bool, limit int) []byte {
	start := len(dst)
	dst = appendHeader(dst, q, int(e.rcode), 0)
	dst = append(dst, p[headerLen:q.qEnd]...)
	dst = append(dst, e.msg[e.qEnd:]...)
	out := dst[start:]
	var elapsed uint32
	if !e.static {
		if d := now.UnixNano() - e.stored; d > 0 {
			elapsed = uint32(d / int64(time.Second))
		}
	}
	opt := 0
	if q.edns {
		opt = optLen(stale)
	}
	var counts [3]uint16
	total := 0
	for i := range counts {
		counts[i] = binary.BigEndian.Uint16(e.msg[6+2*i:])
		total += int(counts[i])
	}
	kept, cut := 0, int(e.qEnd)
	off := int(e.qEnd)
	for i := range total {
		o, err := skipName(out, off)
		if err != nil || o+10 > len(out) {
			break // cannot happen: e.msg passed walk
		}
		ttl := uint32(staleTTL)
		if !stale {
			ttl = 0
			if orig := binary.BigEndian.Uint32(out[o+4:]); orig > elapsed {
				ttl = orig - elapsed
			}
		}
		binary.BigEndian.PutUint32(out[o+4:], ttl)
		off = o + 10 + int(binary.BigEndian.Uint16(out[o+8:]))
		if kept == i && off+opt <= limit {
			kept, cut = i+1, off
		}
	}
	if kept < total {
		dst = dst[:start+cut]
		out = dst[start:]
		left := kept
		for i := range counts {
			counts[i] = uint16(min(left, int(counts[i])))
			left -= int(counts[i])
		}
		binary.BigEndian.PutUint16(out[2:], binary.BigEndian.Uint16(out[2:])|flagTC)
	}
	binary.BigEndian.PutUint16(out[6:], counts[0])
	binary.BigEndian.PutUint16(out[8:], counts[1])
	ar := counts[2]
	if q.edns {
		dst = appendOPT(dst, q.do, stale, 0)
		ar++
	}
	binary.BigEndian.PutUint16(dst[start+10:], ar)
	return dst
}

// appendHeader writes a response header for q with rcode and extra flags;
// counts are QD=1 (0 if the question did not parse) and the rest zero.
func appendHeader(dst []byte, q *query, rcode int, extra uint16) []byte {
	fl := flagQR | flagRA | q.flags&(flagRD|flagCD) | extra | uint16(rcode&0xF)
	dst = binary.BigEndian.AppendUint16(dst, q.id)
	dst = binary.BigEndian.AppendUint16(dst, fl)
	qd := uint16(0)
	if q.qEnd > 0 {
		qd = 1
	}
	dst = binary.BigEndian.AppendUint16(dst, qd)
	return append(dst, 0, 0, 0, 0, 0, 0)
}

// appendError writes an answer-less reply (REFUSED, FORMERR, SERVFAIL, or a
// NOERROR with TC to push a rate-limited client to TCP).
func appendError(dst []byte, p []byte, q *query, rcode int, extra uint16) []byte {
	start := len(dst)
	dst = appendHeader(dst, q, rcode, extra)
	if q.qEnd > 0 {
		dst = append(dst, p[headerLen:q.qEnd]...)
	}
	if q.edns {
		dst = appendOPT(dst, q.do, false, uint8(rcode>>4))
		binary.BigEndian.PutUint16(dst[start+10:], 1)
	}
	return dst
}
