package oidc

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"

	"github.com/idleguard/idleguard/session"
)

// OutboxStore is the durable back-channel logout outbox, shared by every
// process that delivers from it.
type OutboxStore interface {
	ClaimDeliveries(ctx context.Context, c session.DeliveryClaim) ([]session.OutboxEntry, error)
	DeliveryDone(ctx context.Context, o session.OutboxEntry, at time.Time, ok bool, next time.Time, errText string) error
	PendingDeliveries(ctx context.Context) (int, error)
	Deliveries(ctx context.Context, sid string) ([]session.OutboxEntry, error)
	PurgeDeliveries(ctx context.Context, before time.Time) (int64, error)
}

// backchannelEvent is the events member of a logout token.
const backchannelEvent = "http://schemas.openid.net/event/backchannel-logout"

// logoutTokenTTL is how long a logout token is valid after it is signed.
const logoutTokenTTL = 2 * time.Minute

// breakerFailures consecutive failures open a destination's circuit.
const breakerFailures = 3

// An authentication session may end and rejoin one app at most rejoinBurst
// times per rejoinWindow. Every end of an app writes a logout notice and
// audit events, and a person can end an app at will (revoking its refresh
// token, replaying one) and rejoin it by SSO; without a limit one signed-in
// person could fill the database. A person who signs out of an app and back
// in a few times is not affected.
const (
	rejoinBurst  = 5
	rejoinWindow = 10 * time.Minute
)

// checkRejoin refuses a new application session of clientID in sid when that
// pair has ended more than rejoinBurst times within rejoinWindow. It reads the stored
// sessions, which every process shares.
func (p *Provider) checkRejoin(ctx context.Context, sid, clientID string) error {
	_, apps, err := p.store.AuthSession(ctx, sid)
	if err != nil {
		return nil // the join decides (an unknown or ended session is refused there)
	}
	since, ended := p.now().Add(-rejoinWindow), 0
	for _, a := range apps {
		switch {
		case a.ClientID != clientID:
		case a.Live():
			return nil // SSO into the live app session: nothing new is created
		case a.EndedAt.After(since):
			ended++
		}
	}
	if ended > rejoinBurst {
		return (&zoidc.Error{ErrorType: "temporarily_unavailable"}).WithDescription(
			"this app was signed out of this session %d times in %s; try again later", ended, rejoinWindow)
	}
	return nil
}

func (p *Provider) wakeDelivery() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// deliveryLoop keeps the outbox moving: it claims due rows whenever a session
// ends, whenever a delivery finishes (its slot is free at once: no delivery
// waits for another) and at every poll interval (retries, and rows left by a
// process that died).
func (p *Provider) deliveryLoop(ctx context.Context) {
	tick := time.NewTicker(p.cfg.Backchannel.PollInterval)
	defer tick.Stop()
	defer p.outbox.wait()
	defer p.pushes.wait()
	others := true
	for {
		_, freed, err := p.outbox.fill(ctx, others)
		if err != nil && ctx.Err() == nil {
			p.cfg.Logger.ErrorContext(ctx, "back-channel delivery", "error", err)
		}
		// Push destinations are the receivers' own: always "others".
		_, pushed, err := p.pushes.fill(ctx, true)
		if err != nil && ctx.Err() == nil {
			p.cfg.Logger.ErrorContext(ctx, "signal push", "error", err)
		}
		others = false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			others = true
		case <-p.wake:
		case <-freed:
		case <-pushed:
		}
	}
}

// DeliverDue delivers every due row it can claim and waits for those
// deliveries (and any already in flight) to finish; it returns how many it
// started. The background loop does the same without waiting.
//
// It drives both durable queues: back-channel logouts and pushed SETs.
func (p *Provider) DeliverDue(ctx context.Context) (int, error) {
	n, err := drain(ctx, p.outbox)
	if err != nil {
		return n, err
	}
	m, err := drain(ctx, p.pushes)
	return n + m, err
}

func drain[T any](ctx context.Context, d *dispatcher[T]) (int, error) {
	total := 0
	for {
		n, freed, err := d.fill(ctx, true)
		total += n
		if err != nil {
			return total, err
		}
		if freed == nil {
			return total, nil // nothing claimable, and nothing in flight that could free a slot
		}
		select {
		case <-ctx.Done():
			return total, ctx.Err()
		case <-freed:
		}
	}
}

// dispatcher runs one process's back-channel deliveries. At most
// Backchannel.Concurrency POSTs are in flight in all, and at most
// Backchannel.PerDestination to one backchannel_logout_uri, so an app that
// never answers holds only its own slots. A destination that fails
// breakerFailures times in a row is not tried again until a cooldown has
// passed (InitialBackoff, doubled for every further opening, up to
// MaxBackoff), and then by one probe at a time. Rows are claimed from the
// shared outbox only when a slot is free for them, so nothing this process
// cannot start now is held away from other processes.
//
// It serves any durable queue of deliveries (the logout outbox, the Shared
// Signals push queue): q says where rows go and how one is delivered.
type dispatcher[T any] struct {
	p      *Provider
	q      queue[T]
	worker string // claimed_by: this process

	mu       sync.Mutex
	inFlight int
	freed    chan struct{} // closed (and replaced) whenever a delivery finishes
	dests    map[string]*destination
	turn     int // rotates which destination is offered free slots first
	running  sync.WaitGroup
}

// destination is the circuit breaker and in-flight count of one URI.
type destination struct {
	inFlight  int
	failures  int       // consecutive
	trips     int       // consecutive openings: the cooldown doubles
	openUntil time.Time // no new attempt before this
}

// queue is a durable queue of deliveries of type T that several processes
// claim rows from.
type queue[T any] interface {
	// destinations lists the configured destinations, sorted; rows of
	// others are claimed one at a time (claimOthers).
	destinations() []string
	claim(ctx context.Context, c session.DeliveryClaim) ([]T, error)
	destination(row T) string
	// deliver makes one attempt, records it and reports whether it succeeded.
	deliver(ctx context.Context, row T) bool
}

func newDispatcher[T any](p *Provider, q queue[T]) *dispatcher[T] {
	return &dispatcher[T]{p: p, q: q, worker: p.cfg.Session.ReplicaID, freed: make(chan struct{}), dests: map[string]*destination{}}
}

// logoutQueue is the back-channel logout outbox.
type logoutQueue struct{ p *Provider }

func (q logoutQueue) destinations() []string { return q.p.backchannelURIs }
func (q logoutQueue) claim(ctx context.Context, c session.DeliveryClaim) ([]session.OutboxEntry, error) {
	return q.p.store.ClaimDeliveries(ctx, c)
}
func (q logoutQueue) destination(o session.OutboxEntry) string { return o.URI }
func (q logoutQueue) deliver(ctx context.Context, o session.OutboxEntry) bool {
	return q.p.deliver(ctx, o)
}

// free returns how many more deliveries to uri may start now.
func (d *dispatcher[T]) free(uri string, now time.Time) int {
	cfg := d.p.cfg.Backchannel
	dst := d.dests[uri]
	if dst == nil {
		dst = &destination{}
		d.dests[uri] = dst
	}
	limit := cfg.PerDestination
	switch {
	case now.Before(dst.openUntil):
		return 0
	case dst.failures >= breakerFailures:
		limit = 1 // half-open: one probe
	}
	return max(0, min(limit-dst.inFlight, cfg.Concurrency-d.inFlight))
}

// destinations lists the URIs of the configured clients, rotated so that
// each round offers the free slots to a different one first.
func (d *dispatcher[T]) destinations() []string {
	uris := d.q.destinations()
	if len(uris) == 0 {
		return nil
	}
	d.turn = (d.turn + 1) % len(uris)
	return append(slices.Clone(uris[d.turn:]), uris[:d.turn]...)
}

// fill claims and starts as many due deliveries as there are free slots.
// With others, it also looks for rows of URIs that no client has any more
// (the configuration changed after the end): that query reads every due
// row, so the loop runs it at the poll interval only.
//
// It returns how many it started and a channel that is closed when a
// delivery in flight finishes (nil when nothing is in flight), taken under
// the same lock, so that no finish can slip between the two.
func (d *dispatcher[T]) fill(ctx context.Context, others bool) (int, <-chan struct{}, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	started, err := d.claimAll(ctx, others)
	if d.inFlight == 0 {
		return started, nil, err
	}
	return started, d.freed, err
}

func (d *dispatcher[T]) claimAll(ctx context.Context, others bool) (int, error) {
	started := 0
	for _, uri := range d.destinations() {
		n, err := d.claim(ctx, session.DeliveryClaim{URI: uri})
		started += n
		if err != nil {
			return started, err
		}
	}
	if !others {
		return started, nil
	}
	n, err := d.claimOthers(ctx)
	return started + n, err
}

// claimOthers claims rows of unconfigured destinations one at a time, each
// within its own destination's limit.
func (d *dispatcher[T]) claimOthers(ctx context.Context) (int, error) {
	except := slices.Clone(d.q.destinations())
	for uri := range d.dests {
		if !slices.Contains(except, uri) && d.free(uri, d.p.now()) == 0 {
			except = append(except, uri)
		}
	}
	started := 0
	for d.inFlight < d.p.cfg.Backchannel.Concurrency {
		rows, err := d.q.claim(ctx, d.request(session.DeliveryClaim{Except: except}, 1))
		if err != nil || len(rows) == 0 {
			return started, err
		}
		o, uri := rows[0], d.q.destination(rows[0])
		if d.free(uri, d.p.now()) > 0 {
			d.start(ctx, o)
			started++
		}
		if d.free(uri, d.p.now()) == 0 {
			except = append(except, uri)
		}
	}
	return started, nil
}

func (d *dispatcher[T]) request(c session.DeliveryClaim, limit int) session.DeliveryClaim {
	now := d.p.now()
	c.Worker, c.Now, c.Until, c.Limit = d.worker, now, now.Add(d.p.claimTTL()), limit
	return c
}

// claim claims and starts up to the free slots of one destination.
func (d *dispatcher[T]) claim(ctx context.Context, c session.DeliveryClaim) (int, error) {
	n := d.free(c.URI, d.p.now())
	if n == 0 {
		return 0, nil
	}
	rows, err := d.q.claim(ctx, d.request(c, n))
	for _, o := range rows {
		d.start(ctx, o)
	}
	return len(rows), err
}

// start runs one delivery in its own goroutine. Callers hold d.mu.
func (d *dispatcher[T]) start(ctx context.Context, o T) {
	uri := d.q.destination(o)
	d.inFlight++
	d.dests[uri].inFlight++
	d.running.Add(1)
	go func() {
		defer d.running.Done()
		d.finished(uri, d.q.deliver(ctx, o))
	}()
}

// finished frees a slot and moves the destination's circuit breaker.
func (d *dispatcher[T]) finished(uri string, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inFlight--
	close(d.freed)
	d.freed = make(chan struct{})
	dst := d.dests[uri]
	dst.inFlight--
	if ok {
		*dst = destination{inFlight: dst.inFlight}
		return
	}
	dst.failures++
	if dst.failures >= breakerFailures && !d.p.now().Before(dst.openUntil) {
		cfg := d.p.cfg.Backchannel
		cool := cfg.InitialBackoff << min(dst.trips, 30)
		if cool <= 0 || cool > cfg.MaxBackoff {
			cool = cfg.MaxBackoff
		}
		dst.trips++
		dst.openUntil = d.p.now().Add(cool)
		d.p.cfg.Logger.Warn("delivery destination failing: paused", "uri", uri, "failures", dst.failures, "until", dst.openUntil)
	}
}

func (d *dispatcher[T]) wait() { d.running.Wait() }

// claimTTL is how long a claim holds a row: longer than any one attempt
// (the POST's timeout, signing and the write that records it), so that only
// a worker that died loses its rows to another.
func (p *Provider) claimTTL() time.Duration { return 2*p.cfg.Backchannel.Timeout + 30*time.Second }

// deliver makes one attempt and records it; it reports whether the app
// answered 2xx.
func (p *Provider) deliver(ctx context.Context, o session.OutboxEntry) bool {
	err := p.post(ctx, o)
	now := p.now()
	next, errText := p.retryAt(now, o.CreatedAt, o.Attempts, err)
	rctx, cancel := recordContext(ctx)
	defer cancel()
	if derr := p.store.DeliveryDone(rctx, o, now, err == nil, next, errText); derr != nil {
		p.cfg.Logger.ErrorContext(ctx, "record delivery", "jti", o.JTI, "error", derr)
		return err == nil
	}
	switch {
	case err == nil:
		p.counters.delivered.Add(1)
		p.cfg.Logger.InfoContext(ctx, "back-channel logout delivered", "client", o.ClientID, "sid", o.SID, "reason", o.Reason)
	case next.IsZero():
		p.counters.abandoned.Add(1)
		p.cfg.Logger.WarnContext(ctx, "back-channel logout abandoned", "client", o.ClientID, "sid", o.SID, "error", err)
	default:
		p.counters.retrying.Add(1)
		p.cfg.Logger.InfoContext(ctx, "back-channel logout will be retried", "client", o.ClientID, "sid", o.SID, "at", next, "error", err)
	}
	return err == nil
}

// retryAt is when a delivery first queued at created, after attempts
// failed ones, is tried again following err (zero: not again, it is
// abandoned after Backchannel.RetryFor; or it succeeded), and the error's
// text to record.
func (p *Provider) retryAt(now, created time.Time, attempts int, err error) (time.Time, string) {
	if err == nil {
		return time.Time{}, ""
	}
	if now.Sub(created) >= p.cfg.Backchannel.RetryFor {
		return time.Time{}, err.Error()
	}
	return now.Add(p.backoff(attempts)), err.Error()
}

// recordContext is the context a delivery's outcome is recorded with:
// even when the process is stopping, since a POST that was delivered must
// not be delivered again for want of a write.
func recordContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

// backoff is exponential with full jitter: a random delay in
// [d/2, d] where d = InitialBackoff * 2^attempts, capped at MaxBackoff.
func (p *Provider) backoff(attempts int) time.Duration {
	d := p.cfg.Backchannel.InitialBackoff << min(attempts, 30)
	if d <= 0 || d > p.cfg.Backchannel.MaxBackoff {
		d = p.cfg.Backchannel.MaxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

func (p *Provider) post(ctx context.Context, o session.OutboxEntry) error {
	token, err := p.LogoutToken(o)
	if err != nil {
		return fmt.Errorf("sign logout token: %w", err)
	}
	return p.push(ctx, o.URI, url.Values{"logout_token": {token}}.Encode(),
		http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
}

// push makes one POST of a delivery (a logout token, a SET) within
// Backchannel.Timeout; any 2xx is success.
func (p *Provider) push(ctx context.Context, uri, body string, header http.Header) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Backchannel.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, uri, strings.NewReader(body))
	if err != nil {
		return err
	}
	maps.Copy(req.Header, header)
	resp, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s answered %s", uri, resp.Status)
	}
	return nil
}

// logoutClaims are the claims of a logout token (OpenID Connect Back-Channel
// Logout 1.0, section 2.4), plus idleguard's reason.
type logoutClaims struct {
	Issuer   string                    `json:"iss"`
	Audience []string                  `json:"aud"`
	IssuedAt int64                     `json:"iat"`
	Expiry   int64                     `json:"exp"`
	JTI      string                    `json:"jti"`
	SID      string                    `json:"sid"`
	Subject  string                    `json:"sub"`
	Events   map[string]map[string]any `json:"events"`
	Reason   string                    `json:"reason"`
}

// LogoutToken signs the logout token for one outbox row: typ logout+jwt,
// no nonce, the row's fixed jti so a repeated delivery can be recognised.
func (p *Provider) LogoutToken(o session.OutboxEntry) (string, error) {
	now := p.now()
	claims := logoutClaims{
		Issuer: p.issuer(), Audience: []string{o.ClientID}, IssuedAt: now.Unix(), Expiry: now.Add(logoutTokenTTL).Unix(),
		JTI: o.JTI, SID: o.SID, Subject: o.Subject, Events: map[string]map[string]any{backchannelEvent: {}}, Reason: string(o.Reason),
	}
	return p.signJWT("logout+jwt", claims)
}
