package smtpd

import (
	"errors"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"golang.org/x/crypto/bcrypt"

	"github.com/mxbox/mxbox/firmware/config"
)

// users checks SMTP AUTH credentials against bcrypt hashes from the config.
type users struct {
	hashes map[string][]byte
	// dummy is compared when the user is unknown so that unknown and known
	// users take the same time.
	dummy []byte
}

func newUsers(list []config.User) *users {
	u := &users{hashes: map[string][]byte{}}
	for _, e := range list {
		u.hashes[e.Name] = []byte(e.PasswordHash)
	}
	u.dummy, _ = bcrypt.GenerateFromPassword([]byte("mxbox-dummy"), bcrypt.MinCost)
	return u
}

func (u *users) check(name, password string) bool {
	h, ok := u.hashes[name]
	if !ok {
		_ = bcrypt.CompareHashAndPassword(u.dummy, []byte(password))
		return false
	}
	return bcrypt.CompareHashAndPassword(h, []byte(password)) == nil
}

// authThrottle counts failed logins per client address in a sliding window;
// past the limit, AUTH is refused outright (454) until the window passes, so
// password guessing costs an attacker the window per few tries.
type authThrottle struct {
	mu     sync.Mutex
	limit  int
	window time.Duration
	now    func() time.Time
	fails  map[string][]time.Time
}

func newAuthThrottle(limit int, window time.Duration, now func() time.Time) *authThrottle {
	return &authThrottle{limit: limit, window: window, now: now, fails: map[string][]time.Time{}}
}

func (t *authThrottle) prune(ip string, now time.Time) []time.Time {
	ts := t.fails[ip]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) > t.window {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(t.fails, ip)
	} else {
		t.fails[ip] = ts
	}
	return ts
}

func (t *authThrottle) blocked(ip string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.prune(ip, t.now())) >= t.limit
}

func (t *authThrottle) fail(ip string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	ts := t.prune(ip, now)
	// Bound memory per address: only the newest `limit` failures matter.
	if len(ts) >= t.limit {
		ts = ts[1:]
	}
	t.fails[ip] = append(ts, now)
	// Bound the map: an attacker rotating addresses must not grow it forever.
	if len(t.fails) > 10000 {
		for k := range t.fails {
			t.prune(k, now)
		}
	}
}

// loginServer implements the obsolete but widely used AUTH LOGIN mechanism
// (go-sasl ships only the client side): two base64 prompts, user then password.
type loginServer struct {
	step     int
	username string
	check    func(user, pass string) error
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		l.step = 1
		if len(response) > 0 { // initial response carries the user name
			l.username = string(response)
			l.step = 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.username = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.check(l.username, string(response))
	}
	return nil, false, errors.New("unexpected LOGIN response")
}

var _ sasl.Server = (*loginServer)(nil)
