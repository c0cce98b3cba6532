package resolver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// The snapshot lets the box answer what it knew after a power cut during an
// upstream outage. It holds each entry's packed answer with its original
// store and expiry times, so loaded entries are exactly as fresh (or as
// stale) as before. A CRC guards against a torn write; a bad snapshot is
// ignored, never fatal.

const (
	snapshotName  = "resolver-cache"
	snapshotMagic = "MXDNSC1\n"
)

func (r *Resolver) encodeSnapshot(now time.Time) []byte {
	var buf bytes.Buffer
	buf.WriteString(snapshotMagic)
	var tmp [8]byte
	put16 := func(v int) { binary.BigEndian.PutUint16(tmp[:2], uint16(v)); buf.Write(tmp[:2]) }
	put64 := func(v int64) { binary.BigEndian.PutUint64(tmp[:], uint64(v)); buf.Write(tmp[:]) }
	r.cache.each(func(e *entry) {
		if e.kind == kindServFail || e.dead(now) {
			return
		}
		put16(len(e.key))
		buf.WriteString(e.key)
		put16(int(e.qtype))
		buf.WriteByte(byte(e.kind))
		put64(e.stored)
		put64(e.expires)
		put64(e.staleUntil)
		put16(len(e.msg))
		buf.Write(e.msg)
	})
	binary.BigEndian.PutUint32(tmp[:4], crc32.ChecksumIEEE(buf.Bytes()))
	buf.Write(tmp[:4])
	return buf.Bytes()
}

func (r *Resolver) decodeSnapshot(data []byte, now time.Time) (int, error) {
	if len(data) < len(snapshotMagic)+4 || string(data[:len(snapshotMagic)]) != snapshotMagic {
		return 0, errors.New("not a resolver snapshot")
	}
	body, sum := data[:len(data)-4], binary.BigEndian.Uint32(data[len(data)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return 0, errors.New("checksum mismatch (torn write?)")
	}
	p := body[len(snapshotMagic):]
	bad := errors.New("truncated record")
	take := func(n int) ([]byte, error) {
		if len(p) < n {
			return nil, bad
		}
		b := p[:n]
		p = p[n:]
		return b, nil
	}
	get16 := func() (int, error) {
		b, err := take(2)
		if err != nil {
			return 0, err
		}
		return int(binary.BigEndian.Uint16(b)), nil
	}
	get64 := func() (int64, error) {
		b, err := take(8)
		if err != nil {
			return 0, err
		}
		return int64(binary.BigEndian.Uint64(b)), nil
	}
	loaded := 0
	for len(p) > 0 {
		var e entry
		kl, err := get16()
		if err != nil {
			return loaded, err
		}
		k, err := take(kl)
		if err != nil {
			return loaded, err
		}
		qt, err := get16()
		if err != nil {
			return loaded, err
		}
		kb, err := take(1)
		if err != nil {
			return loaded, err
		}
		var ts [3]int64
		for i := range ts {
			if ts[i], err = get64(); err != nil {
				return loaded, err
			}
		}
		ml, err := get16()
		if err != nil {
			return loaded, err
		}
		msg, err := take(ml)
		if err != nil {
			return loaded, err
		}
		e.key, e.qtype, e.kind = string(k), uint16(qt), kind(kb[0])
		e.stored, e.expires, e.staleUntil = ts[0], ts[1], ts[2]
		e.msg = append([]byte(nil), msg...)
		qEnd, err := walk(e.msg)
		if err != nil {
			return loaded, fmt.Errorf("entry %d: %v", loaded, err)
		}
		e.qEnd = uint16(qEnd)
		e.rcode = uint8(binary.BigEndian.Uint16(e.msg[2:]) & 0xF)
		// The key must be the question it answers, or a corrupt snapshot
		// could make the fast path splice mismatched bytes.
		if len(e.key) != qEnd-headerLen+1 || e.key[:len(e.key)-1] != string(e.msg[headerLen:qEnd]) || e.key[len(e.key)-1] > 1 {
			return loaded, fmt.Errorf("entry %d: key does not match its question", loaded)
		}
		if e.kind < kindPositive || e.kind > kindNoData || e.dead(now) {
			continue
		}
		r.cache.put(&e)
		loaded++
	}
	return loaded, nil
}

func (r *Resolver) loadSnapshot() {
	if r.store == nil {
		return
	}
	data, err := r.store.LoadBlob(snapshotName)
	if err != nil {
		r.log.Warn("dns cache snapshot not loaded", "err", err)
		return
	}
	if data == nil {
		return
	}
	n, err := r.decodeSnapshot(data, r.now())
	if err != nil {
		r.log.Warn("dns cache snapshot partly loaded", "entries", n, "err", err)
	} else {
		r.log.Info("dns cache snapshot loaded", "entries", n)
	}
	r.lastSaved.Store(r.cache.changed.Load())
}

// saveSnapshot writes the cache if it changed since the last save.
func (r *Resolver) saveSnapshot() error {
	if r.store == nil {
		return nil
	}
	r.snapshotMu.Lock()
	defer r.snapshotMu.Unlock()
	gen := r.cache.changed.Load()
	if gen == r.lastSaved.Load() {
		return nil
	}
	if err := r.store.SaveBlob(snapshotName, r.encodeSnapshot(r.now())); err != nil {
		return fmt.Errorf("save dns cache snapshot: %v", err)
	}
	r.lastSaved.Store(gen)
	return nil
}

// Start loads the snapshot, opens the listeners when cfg.Listen is set and
// starts housekeeping (pinned refresh, periodic snapshots).
func (r *Resolver) Start() error {
	r.loadSnapshot()
	if r.cfg.Listen != "" {
		if err := r.listen(); err != nil {
			return err
		}
	}
	r.wg.Add(1)
	go r.housekeeping()
	return nil
}

func (r *Resolver) housekeeping() {
	defer r.wg.Done()
	interval := r.cfg.SnapshotInterval.D()
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	pin := time.NewTicker(10 * time.Second)
	snap := time.NewTicker(interval)
	defer pin.Stop()
	defer snap.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-pin.C:
			r.refreshPinned()
		case <-snap.C:
			if err := r.saveSnapshot(); err != nil {
				r.log.Warn("dns snapshot", "err", err)
			}
		}
	}
}

// Close stops the listeners and background work (waiting at most until
// ctx ends) and saves the snapshot.
func (r *Resolver) Close(ctx context.Context) error {
	r.closeOnce.Do(func() {
		close(r.done)
		if r.srv != nil {
			r.srv.close()
		}
	})
	waited := make(chan struct{})
	go func() { r.wg.Wait(); close(waited) }()
	var err error
	select {
	case <-waited:
	case <-ctx.Done():
		err = fmt.Errorf("resolver close: %w", ctx.Err())
	}
	if serr := r.saveSnapshot(); serr != nil {
		return serr
	}
	return err
}
