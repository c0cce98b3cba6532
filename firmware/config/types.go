package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2/unstable"
)

// Size is a byte count written as an integer or a string with a unit
// ("25MiB", "64M", "512k"). Units are binary: flash and RAM budgets are.
type Size int64

// UnmarshalText parses "25MiB"-style strings; plain integers decode natively.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = Size(v)
	return nil
}

// MarshalText writes the size back in the same notation.
func (s Size) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(int64(s), 10)), nil }

// ParseSize parses "1024", "64k", "25MiB", "1G".
func ParseSize(in string) (int64, error) {
	t := strings.TrimSpace(in)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit (k, M, G)", in)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: %v", in, err)
	}
	var mul int64
	switch strings.ToLower(strings.TrimSpace(t[i:])) {
	case "", "b":
		mul = 1
	case "k", "kb", "kib":
		mul = 1 << 10
	case "m", "mb", "mib":
		mul = 1 << 20
	case "g", "gb", "gib":
		mul = 1 << 30
	default:
		return 0, fmt.Errorf("invalid size %q: unknown unit %q", in, t[i:])
	}
	if n > (1<<62)/mul {
		return 0, fmt.Errorf("invalid size %q: too large", in)
	}
	return n * mul, nil
}

// Duration is a time.Duration written as "5m", "1h30m" or "5d" (days are
// allowed because queue lifetimes are counted in them).
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalText parses Go duration syntax plus a "d" (24 h) unit.
func (d *Duration) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if strings.HasSuffix(s, "d") {
		n, err := strconv.ParseInt(strings.TrimSuffix(s, "d"), 10, 64)
		if err != nil || n < 0 || n > 3650 {
			return fmt.Errorf("invalid duration %q", s)
		}
		*d = Duration(time.Duration(n) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: want e.g. 30s, 5m, 4h, 5d", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes Go duration syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// lineIndex maps dotted key paths ("smtp.relay_networks") to the line that
// sets them, so validation errors found after decoding can still name a line.
type lineIndex map[string]int

func keyLines(data []byte) lineIndex {
	idx := lineIndex{}
	p := unstable.Parser{}
	p.Reset(data)
	var table []string
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = keyParts(e.Key())
			line := p.Shape(e.Raw).Start.Line
			if line == 0 {
				line = lineOfKey(&p, e)
			}
			k := strings.Join(table, ".")
			if _, ok := idx[k]; !ok {
				idx[k] = line
			}
		case unstable.KeyValue:
			full := append(append([]string(nil), table...), keyParts(e.Key())...)
			k := strings.Join(full, ".")
			if _, ok := idx[k]; !ok {
				idx[k] = lineOfKey(&p, e)
			}
		}
	}
	return idx
}

func keyParts(it unstable.Iterator) []string {
	var out []string
	for it.Next() {
		out = append(out, string(it.Node().Data))
	}
	return out
}

func lineOfKey(p *unstable.Parser, e *unstable.Node) int {
	it := e.Key()
	if it.Next() {
		return p.Shape(it.Node().Raw).Start.Line
	}
	return 0
}

// find returns the line of key, or of its closest enclosing table, or 0.
func (idx lineIndex) find(key string) int {
	for k := key; k != ""; {
		if l, ok := idx[k]; ok {
			return l
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}
