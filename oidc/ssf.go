package oidc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/idleguard/idleguard/session"
)

// The provider is an OpenID Shared Signals Framework 1.0 transmitter: every
// end of an application session is a CAEP 1.0 session-revoked Security
// Event Token (RFC 8417) for the streams of the resource servers that serve
// that app (clients with resource_server: true, by their serves list).
// Events are queued in the database in the end's own transaction, and
// delivered by poll (RFC 8936, with long polling and acknowledgements) or
// push (RFC 8935, through the same dispatcher as back-channel logout).
//
// This file holds the event side: SET signing, push delivery, the wake-up
// of long polls. ssfapi.go holds the HTTP endpoints.

// SignalStore keeps SSF streams and the events queued on them.
type SignalStore interface {
	CreateStream(ctx context.Context, st *session.Stream, max int) error
	Stream(ctx context.Context, receiver, id string) (*session.Stream, error)
	Streams(ctx context.Context, receiver string) ([]*session.Stream, error)
	ReplaceStream(ctx context.Context, st *session.Stream) error
	DeleteStream(ctx context.Context, receiver, id string) error
	SetStreamStatus(ctx context.Context, receiver, id, status, reason string) error
	RequestVerification(ctx context.Context, receiver string, sig session.Signal, notBefore time.Time) error
	PendingSignals(ctx context.Context, receiver, streamID string, limit int) ([]session.Signal, error)
	LastSignalID(ctx context.Context) (int64, error)
	AckSignals(ctx context.Context, receiver, streamID string, acks []session.SignalAck, at time.Time) (int, error)
	ClaimSignalPushes(ctx context.Context, c session.DeliveryClaim) ([]session.Signal, error)
	SignalPushDone(ctx context.Context, g session.Signal, at time.Time, ok bool, next time.Time, errText string) error
	PurgeSignals(ctx context.Context, before time.Time) (int64, error)
}

// SSFConfig tunes the Shared Signals transmitter.
type SSFConfig struct {
	// MaxStreams bounds the streams of one receiver; default 5.
	MaxStreams int
	// PollWait is the longest a long poll (RFC 8936 returnImmediately
	// false) is held open when no event is queued; default 20s, below the
	// server's write timeout.
	PollWait time.Duration
	// VerificationInterval is the stream's min_verification_interval;
	// default 10s.
	VerificationInterval time.Duration
	// WatchInterval is how often a process holding long polls looks for
	// events queued by another process (another replica, the CLI); events
	// queued here wake the polls at once. Default 250ms.
	WatchInterval time.Duration
}

// DefaultSSF holds the defaults of SSFConfig, for the configuration file
// and the provider alike.
var DefaultSSF = SSFConfig{MaxStreams: 5, PollWait: 20 * time.Second, VerificationInterval: 10 * time.Second,
	WatchInterval: 250 * time.Millisecond}

func (c *SSFConfig) setDefaults() {
	if c.MaxStreams <= 0 {
		c.MaxStreams = DefaultSSF.MaxStreams
	}
	if c.PollWait <= 0 {
		c.PollWait = DefaultSSF.PollWait
	}
	if c.VerificationInterval <= 0 {
		c.VerificationInterval = DefaultSSF.VerificationInterval
	}
	if c.WatchInterval <= 0 {
		c.WatchInterval = DefaultSSF.WatchInterval
	}
}

// SSF stream statuses (SSF 1.0 section 8.1.2).
const (
	streamEnabled  = "enabled"
	streamPaused   = "paused"
	streamDisabled = "disabled"
)

// eventsSupported are the event types the provider transmits.
var eventsSupported = []string{session.EventSessionRevoked, session.EventVerification}

// signalReceivers maps every app to the resource servers that serve it.
func signalReceivers(clients []*Client) map[string][]string {
	out := map[string][]string{}
	for _, rs := range clients {
		if !rs.ResourceServer {
			continue
		}
		serves := rs.Serves
		if len(serves) == 0 {
			serves = []string{rs.ID}
		}
		for _, app := range serves {
			out[app] = append(out[app], rs.ID)
		}
	}
	return out
}

// subjectID is an SSF subject identifier (RFC 9493 formats, and SSF's
// complex subject).
type subjectID struct {
	Format      string     `json:"format"`
	ID          string     `json:"id,omitempty"`
	Issuer      string     `json:"iss,omitempty"`
	Subject     string     `json:"sub,omitempty"`
	Session     *subjectID `json:"session,omitempty"`
	User        *subjectID `json:"user,omitempty"`
	Application *subjectID `json:"application,omitempty"`
}

// setClaims are the claims of an SSF Security Event Token (RFC 8417
// section 2.2, SSF 1.0 section 4.1): no sub and no exp, the subject in
// sub_id, one event in events.
type setClaims struct {
	Issuer   string         `json:"iss"`
	Audience string         `json:"aud"`
	IssuedAt int64          `json:"iat"`
	JTI      string         `json:"jti"`
	Txn      string         `json:"txn,omitempty"`
	SubID    subjectID      `json:"sub_id"`
	Events   map[string]any `json:"events"`
}

// initiatingEntity is CAEP's initiating_entity for an end reason.
func initiatingEntity(r session.Reason) string {
	switch r {
	case session.ReasonLogout:
		return "user"
	case session.ReasonAdmin:
		return "admin"
	case session.ReasonRefreshReuse, session.ReasonCodeReuse:
		return "system"
	default: // idle_timeout, max_lifetime, app_idle_timeout
		return "policy"
	}
}

// SignalToken signs the SET of one queued event, with typ secevent+jwt
// (SSF 1.0 section 4.1.1) and the event's fixed jti, so that a receiver
// recognises a SET delivered twice.
func (p *Provider) SignalToken(g session.Signal) (string, error) {
	c := setClaims{Issuer: p.issuer(), Audience: g.Receiver, IssuedAt: p.now().Unix(), JTI: g.JTI, Txn: g.Txn}
	switch g.Event {
	case session.EventSessionRevoked:
		c.SubID = subjectID{Format: "complex",
			Session:     &subjectID{Format: "opaque", ID: g.SID},
			User:        &subjectID{Format: "iss_sub", Issuer: p.issuer(), Subject: g.Subject},
			Application: &subjectID{Format: "opaque", ID: g.ClientID}}
		c.Events = map[string]any{g.Event: map[string]any{
			"event_timestamp":   g.At.Unix(),
			"initiating_entity": initiatingEntity(g.Reason),
			"reason_admin":      map[string]string{"en": string(g.Reason)},
		}}
	case session.EventVerification:
		c.SubID = subjectID{Format: "opaque", ID: g.StreamID}
		ev := map[string]any{}
		if g.State != "" {
			ev["state"] = g.State
		}
		c.Events = map[string]any{g.Event: ev}
	default:
		return "", fmt.Errorf("event %q: not transmitted", g.Event)
	}
	return p.signJWT("secevent+jwt", c)
}

// pushQueue is the queue of events of push streams (RFC 8935). Its
// destinations are the receivers' endpoints, which the configuration does
// not list: every row is claimed as an "other" destination's.
type pushQueue struct{ p *Provider }

func (q pushQueue) destinations() []string { return nil }
func (q pushQueue) claim(ctx context.Context, c session.DeliveryClaim) ([]session.Signal, error) {
	return q.p.store.ClaimSignalPushes(ctx, c)
}
func (q pushQueue) destination(g session.Signal) string { return g.PushURI }
func (q pushQueue) deliver(ctx context.Context, g session.Signal) bool {
	return q.p.pushSignal(ctx, g)
}

// pushSignal makes one push attempt and records it, with the retry rules
// of back-channel logout.
func (p *Provider) pushSignal(ctx context.Context, g session.Signal) bool {
	st, err := p.store.Stream(ctx, g.Receiver, g.StreamID)
	if errors.Is(err, session.ErrNotFound) {
		return true // deleted meanwhile, with its queue
	}
	if err == nil {
		err = p.postSET(ctx, g, st.AuthorizationHeader)
	}
	now := p.now()
	next, errText := p.retryAt(now, g.At, g.Attempts, err)
	rctx, cancel := recordContext(ctx)
	defer cancel()
	if derr := p.store.SignalPushDone(rctx, g, now, err == nil, next, errText); derr != nil {
		p.cfg.Logger.ErrorContext(ctx, "record signal push", "jti", g.JTI, "error", derr)
	}
	switch {
	case err == nil:
		p.cfg.Logger.InfoContext(ctx, "signal pushed", "receiver", g.Receiver, "stream", g.StreamID, "sid", g.SID)
	case next.IsZero():
		p.cfg.Logger.WarnContext(ctx, "signal push abandoned", "receiver", g.Receiver, "stream", g.StreamID, "error", err)
	default:
		p.cfg.Logger.InfoContext(ctx, "signal push will be retried", "receiver", g.Receiver, "at", next, "error", err)
	}
	return err == nil
}

// postSET posts one SET as RFC 8935 section 2 says; any 2xx is success
// (the RFC's is 202).
func (p *Provider) postSET(ctx context.Context, g session.Signal, authorization string) error {
	token, err := p.SignalToken(g)
	if err != nil {
		return fmt.Errorf("sign SET: %w", err)
	}
	header := http.Header{"Content-Type": {"application/secevent+jwt"}, "Accept": {"application/json"}}
	if authorization != "" {
		header.Set("Authorization", authorization)
	}
	return p.push(ctx, g.PushURI, token, header)
}

// signalHub wakes long polls when events may have been queued: at once
// for events queued by this process (an end, a verification request), and
// within SSF.WatchInterval for events queued by another, found by the
// newest event id.
type signalHub struct {
	mu      sync.Mutex
	ch      chan struct{} // closed (and replaced) on every wake-up
	waiters int
	last    int64
	stopped chan struct{} // closed when the provider stops: polls answer now
	stop    sync.Once
	held    map[string]int // long polls held per stream
}

// maxHeldPolls bounds the long polls one stream may hold open in one
// process; a poll beyond it answers at once, as with returnImmediately.
// A receiver needs one; a runaway one cannot tie up the server.
const maxHeldPolls = 4

func newSignalHub() *signalHub {
	return &signalHub{ch: make(chan struct{}), stopped: make(chan struct{}), held: map[string]int{}}
}

// hold takes one of stream's long-poll slots; false when all are taken.
func (h *signalHub) hold(stream string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held[stream] >= maxHeldPolls {
		return false
	}
	h.held[stream]++
	return true
}

func (h *signalHub) release(stream string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held[stream]--; h.held[stream] <= 0 {
		delete(h.held, stream)
	}
}

// close makes every long poll answer at once (a stopping provider must
// not hold requests for PollWait; the receiver polls another replica, or
// this one once restarted).
func (h *signalHub) close() { h.stop.Do(func() { close(h.stopped) }) }

// wait registers a waiter and returns the channel of the next wake-up;
// call done when no longer waiting. Register before reading the queue, so
// that no wake-up slips between the read and the wait.
func (h *signalHub) wait() (<-chan struct{}, func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.waiters++
	return h.ch, func() {
		h.mu.Lock()
		h.waiters--
		h.mu.Unlock()
	}
}

func (h *signalHub) notify() {
	h.mu.Lock()
	close(h.ch)
	h.ch = make(chan struct{})
	h.mu.Unlock()
}

// watch notifies when the newest event id has moved since the last look;
// it reads nothing while nobody waits.
func (h *signalHub) watch(ctx context.Context, last func(context.Context) (int64, error)) error {
	h.mu.Lock()
	idle := h.waiters == 0
	h.mu.Unlock()
	if idle {
		return nil
	}
	id, err := last(ctx)
	if err != nil {
		return err
	}
	h.mu.Lock()
	moved := id != h.last
	h.last = id
	h.mu.Unlock()
	if moved {
		h.notify()
	}
	return nil
}

// signalLoop watches for events queued by other processes.
func (p *Provider) signalLoop(ctx context.Context) {
	tick := time.NewTicker(p.cfg.SSF.WatchInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := p.signals.watch(ctx, p.store.LastSignalID); err != nil && ctx.Err() == nil {
				p.cfg.Logger.ErrorContext(ctx, "watch signals", "error", err)
			}
		}
	}
}

// signalled wakes everything that moves queued events: the delivery loop
// (pushes, logouts) and the long polls.
func (p *Provider) signalled() {
	p.wakeDelivery()
	p.signals.notify()
}
