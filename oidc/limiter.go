package oidc

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idleguard/idleguard/session"
)

// LoginThrottleStore keeps sign-in attempt counts where every replica sees
// them (issue 10, rule 8): a guess counted at one process slows the next at
// any other.
type LoginThrottleStore interface {
	ReserveLoginAttempt(ctx context.Context, keys []string, now time.Time, p session.LoginPolicy) (session.LoginAttempt, time.Duration, error)
	RefundLoginAttempt(ctx context.Context, a session.LoginAttempt) error
	ForgetLoginFailures(ctx context.Context, keys []string) error
	PurgeLoginFailures(ctx context.Context, now time.Time, p session.LoginPolicy) error
}

// Bounds of the password check in one process. The counts that slow
// guessing are in the database; these only stop one username, address or
// device from holding the argon2id workers, each of which holds 64 MiB.
const (
	inFlightPerUser    = 2
	inFlightPerDevice  = 2
	inFlightPerAddress = 8
	verifyQueuePerSlot = 4 // waiting checks per worker before "busy"
	// verifyQueueWait is the longest wait for a worker, and for a turn among
	// a username's attempts in flight: well inside the server's 30s
	// WriteTimeout, long enough for a burst of honest sign-ins on two cores.
	verifyQueueWait = 12 * time.Second
)

// errLoginBusy: every argon2id worker is taken and the queue is full, or the
// wait for a worker timed out.
var errLoginBusy = errors.New("password checks are busy")

// loginLimiter slows password guessing. Every attempt is counted in the
// store against its keys (the username, or a device cookie that proves an
// earlier sign-in of that person; and the client address) before its
// password is checked; after login.max_failures attempts a key waits a delay
// that doubles with each further one. A right password gives its attempt
// back. In this process, attempts in flight are bounded per key, and
// checks wait in a bounded queue that honours the request's context.
type loginLimiter struct {
	store  LoginThrottleStore
	policy session.LoginPolicy
	now    func() time.Time
	mac    []byte // keys are stored as HMACs, never the username or address

	mu       sync.Mutex
	inFlight map[string]int
	waiting  map[string]int
	changed  chan struct{} // closed and replaced whenever an attempt leaves

	slots  chan struct{} // argon2id checks running
	queued atomic.Int32  // checks running or waiting
}

func newLoginLimiter(store LoginThrottleStore, policy session.LoginPolicy, now func() time.Time, mac []byte) *loginLimiter {
	return &loginLimiter{store: store, policy: policy, now: now, mac: mac, inFlight: make(map[string]int),
		waiting: make(map[string]int), changed: make(chan struct{}),
		slots: make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))}
}

// hash is the stored form of a key of the given kind: a keyed hash, so that
// neither the database nor the audit trail holds what a person typed.
func (l *loginLimiter) hash(kind, value string) string {
	m := hmac.New(sha256.New, l.mac)
	m.Write([]byte(kind + ":" + value))
	return kind + ":" + base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

// addressKey keys an IPv6 client by its /64, which one subscriber usually
// holds whole, so that rotating addresses inside it gains nothing.
func addressKey(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Is4() || ip.Is4In6() {
		return addr
	}
	return netip.PrefixFrom(ip, 64).Masked().String()
}

// keys are what one attempt is counted against. A browser that proves a
// known device of this person is counted on that device alone, so that an
// attacker's guesses at the username or from the same address never lock
// the person out (OWASP, "Slow down online guessing attacks with device
// cookies").
func (l *loginLimiter) keys(a *passwordAttempt) []string {
	if a.device != "" {
		return []string{l.hash("d", a.device)}
	}
	return []string{l.hash("u", strings.ToLower(a.username)), l.hash("a", addressKey(a.address))}
}

func inFlightLimit(key string) int {
	switch key[0] {
	case 'u':
		return inFlightPerUser
	case 'd':
		return inFlightPerDevice
	case 'm': // second-factor codes of one person
		return inFlightPerUser
	}
	return inFlightPerAddress
}

// enter admits an attempt once none of its keys has the most attempts in
// flight, waiting for one to finish (at most verifyQueueWait, and never
// after the client has gone); release must be called when it is over. A
// person who signs in from two tabs at once, or a shared kiosk account,
// waits a moment instead of being refused. Waiting is bounded too: past
// verifyQueuePerSlot waiters per allowed attempt of a key, it refuses at
// once.
func (l *loginLimiter) enter(ctx context.Context, keys []string) (release func(), err error) {
	wait := time.NewTimer(verifyQueueWait)
	defer wait.Stop()
	waiting := false
	defer func() {
		if waiting {
			l.mu.Lock()
			l.unwait(keys)
			l.mu.Unlock()
		}
	}()
	for {
		l.mu.Lock()
		if l.admissible(keys) {
			for _, k := range keys {
				l.inFlight[k]++
			}
			l.mu.Unlock()
			return func() { l.leave(keys) }, nil
		}
		if !waiting {
			if !l.mayWait(keys) {
				l.mu.Unlock()
				return nil, errLoginBusy
			}
			for _, k := range keys {
				l.waiting[k]++
			}
			waiting = true
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-wait.C:
			return nil, errLoginBusy
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *loginLimiter) admissible(keys []string) bool {
	for _, k := range keys {
		if l.inFlight[k] >= inFlightLimit(k) {
			return false
		}
	}
	return true
}

func (l *loginLimiter) mayWait(keys []string) bool {
	for _, k := range keys {
		if l.waiting[k] >= inFlightLimit(k)*verifyQueuePerSlot {
			return false
		}
	}
	return true
}

func (l *loginLimiter) unwait(keys []string) {
	for _, k := range keys {
		if l.waiting[k]--; l.waiting[k] <= 0 {
			delete(l.waiting, k)
		}
	}
}

// leave ends an attempt and wakes the attempts waiting to enter.
func (l *loginLimiter) leave(keys []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if l.inFlight[k]--; l.inFlight[k] <= 0 {
			delete(l.inFlight, k)
		}
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// verify checks password against hash on a bounded pool of workers. It
// gives up with errLoginBusy when the queue is full or the wait too long,
// and with the context's error when the client has gone: a check nobody
// waits for is never started.
func (l *loginLimiter) verify(ctx context.Context, hash, password string) (bool, error) {
	if int(l.queued.Add(1)) > cap(l.slots)*(1+verifyQueuePerSlot) {
		l.queued.Add(-1)
		return false, errLoginBusy
	}
	defer l.queued.Add(-1)
	wait := time.NewTimer(verifyQueueWait)
	defer wait.Stop()
	select {
	case l.slots <- struct{}{}:
	case <-wait.C:
		return false, errLoginBusy
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-l.slots }()
	if err := ctx.Err(); err != nil {
		return false, err
	}
	return session.VerifyPassword(hash, password), nil
}

// succeeded forgets the failures of the username or device that signed in
// and gives the address its attempt back.
func (l *loginLimiter) succeeded(ctx context.Context, a session.LoginAttempt) error {
	var forget, refund []string
	for _, k := range a.Keys {
		if k[0] == 'a' {
			refund = append(refund, k)
		} else {
			forget = append(forget, k)
		}
	}
	return errors.Join(l.store.ForgetLoginFailures(ctx, forget), l.store.RefundLoginAttempt(ctx, a.Only(refund...)))
}

func (l *loginLimiter) purge(ctx context.Context) error {
	return l.store.PurgeLoginFailures(ctx, l.now(), l.policy)
}

// passwordAttempt is one submission of the login form.
type passwordAttempt struct {
	username, password string
	user               *session.User // nil: no such user
	address            string        // the client, after trusted proxies
	device             string        // a device of user that this browser proved, or ""
}

// formFailure answers a refused sign-in form (the login page, or the
// account page's confirmation) with status and the view's message.
type formFailure func(status int, v loginView)

// checkPassword runs one attempt through the limiter. It answers the
// browser itself (through fail) unless the password is right, and reports
// whether it was.
func (p *Provider) checkPassword(w http.ResponseWriter, r *http.Request, a *passwordAttempt, fail formFailure) bool {
	ctx := r.Context()
	keys := p.limiter.keys(a)
	throttled := func(status int, msg string) { fail(status, loginView{Username: a.username, Error: msg}) }
	release, err := p.limiter.enter(ctx, keys)
	if err != nil {
		p.loginThrottled(w, time.Second, "Another sign-in to this account is in progress. Try again in a moment.", throttled)
		return false
	}
	defer release()
	attempt, wait, err := p.reserveLoginAttempt(ctx, keys)
	if err != nil {
		p.serverError(w, r, err)
		return false
	}
	if wait > 0 {
		p.loginThrottled(w, wait, fmt.Sprintf("Too many failed attempts. Try again in %s.", humanWait(wait)), throttled)
		return false
	}
	hash := ""
	if a.user != nil {
		hash = a.user.PasswordHash
	}
	right, err := p.limiter.verify(ctx, hash, a.password)
	if err != nil {
		p.passwordNotChecked(w, r, a, attempt, err, fail)
		return false
	}
	ctx, cancel := p.dbBudget(ctx) // the wait for the check was not the database's
	defer cancel()
	if !right || a.user == nil {
		p.counters.loginFailed.Add(1)
		p.audit(ctx, session.AuditEvent{At: p.now(), Kind: session.AuditLoginFailed, UserID: userID(a.user), Detail: p.loginDetail(ctx, a)})
		fail(http.StatusUnauthorized, loginView{Error: "Wrong username or password.", Username: a.username})
		return false
	}
	if err := p.limiter.succeeded(ctx, attempt); err != nil {
		p.cfg.Logger.WarnContext(ctx, "login throttle: forget failures", "error", err)
	}
	p.counters.loginOK.Add(1)
	return true
}

// reserveLoginAttempt counts an attempt in the store, within one database
// budget.
func (p *Provider) reserveLoginAttempt(ctx context.Context, keys []string) (session.LoginAttempt, time.Duration, error) {
	ctx, cancel := p.dbBudget(ctx)
	defer cancel()
	return p.limiter.store.ReserveLoginAttempt(ctx, keys, p.now(), p.limiter.policy)
}

// passwordNotChecked gives back an attempt whose password was never checked
// (the client went away, or the checks were busy).
func (p *Provider) passwordNotChecked(w http.ResponseWriter, r *http.Request, a *passwordAttempt, attempt session.LoginAttempt, err error, fail formFailure) {
	ctx := r.Context()
	if rerr := p.limiter.store.RefundLoginAttempt(context.WithoutCancel(ctx), attempt); rerr != nil {
		p.cfg.Logger.WarnContext(ctx, "login throttle: refund", "error", rerr)
	}
	if !errors.Is(err, errLoginBusy) {
		p.cfg.Logger.InfoContext(ctx, "login abandoned by the client", "error", err)
		return
	}
	p.cfg.Logger.WarnContext(ctx, "login refused: password checks busy", "address", a.address)
	w.Header().Set("Retry-After", "5")
	fail(http.StatusServiceUnavailable, loginView{Username: a.username,
		Error: "Too many people are signing in right now. Try again in a few seconds."})
}

// loginThrottled answers a sign-in step (a password, a second factor's
// code) the throttle holds back for wait: 429 with Retry-After, through
// fail.
func (p *Provider) loginThrottled(w http.ResponseWriter, wait time.Duration, msg string, fail func(status int, msg string)) {
	p.counters.loginSlow.Add(1)
	w.Header().Set("Retry-After", fmt.Sprint(int(wait.Seconds()+0.999)))
	fail(http.StatusTooManyRequests, msg)
}

// humanWait words a throttle's wait for people, in whole seconds at least.
func humanWait(wait time.Duration) string {
	return humanDuration(max(wait.Round(time.Second), time.Second))
}

func userID(u *session.User) string {
	if u == nil {
		return ""
	}
	return u.ID
}

// loginDetail describes a sign-in attempt for the audit trail. What was
// typed is never stored for an unknown username (it may be a password typed
// in the wrong field): only a keyed hash, which lets attempts at the same
// name be told apart, and its length.
func (p *Provider) loginDetail(ctx context.Context, a *passwordAttempt) string {
	var who string
	if a.user != nil {
		who = "username=" + a.user.Username
	} else {
		who = fmt.Sprintf("unknown_user=%s length=%d", strings.TrimPrefix(p.limiter.hash("audit", strings.ToLower(a.username)), "audit:"), len(a.username))
	}
	device := "new"
	if a.device != "" {
		device = "known"
	}
	return fmt.Sprintf("%s address=%s device=%s request_id=%s", who, a.address, device, requestID(ctx))
}
