package oidc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/idleguard/idleguard/session"
)

// OutboxStore is the durable back-channel logout outbox.
type OutboxStore interface {
	DueDeliveries(ctx context.Context, now time.Time, limit int) ([]session.OutboxEntry, error)
	DeliveryDone(ctx context.Context, o session.OutboxEntry, at time.Time, ok bool, next time.Time, errText string) error
	PendingDeliveries(ctx context.Context) (int, error)
	Deliveries(ctx context.Context, sid string) ([]session.OutboxEntry, error)
}

// backchannelEvent is the events member of a logout token.
const backchannelEvent = "http://schemas.openid.net/event/backchannel-logout"

// logoutTokenTTL is how long a logout token is valid after it is signed.
const logoutTokenTTL = 2 * time.Minute

func (p *Provider) wakeDelivery() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// deliveryLoop delivers due outbox rows whenever a session ends and at every
// poll interval (for retries and rows left by a previous process).
func (p *Provider) deliveryLoop(ctx context.Context) {
	tick := time.NewTicker(p.cfg.Backchannel.PollInterval)
	defer tick.Stop()
	for {
		if _, err := p.DeliverDue(ctx); err != nil && ctx.Err() == nil {
			p.cfg.Logger.ErrorContext(ctx, "back-channel delivery", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-p.wake:
		}
	}
}

// DeliverDue makes one attempt at every due delivery, at most
// Backchannel.Concurrency at a time, and returns how many it attempted.
func (p *Provider) DeliverDue(ctx context.Context) (int, error) {
	total := 0
	for {
		due, err := p.store.DueDeliveries(ctx, p.now(), 256)
		if err != nil {
			return total, err
		}
		if len(due) == 0 {
			return total, nil
		}
		sem := make(chan struct{}, p.cfg.Backchannel.Concurrency)
		var wg sync.WaitGroup
		for _, o := range due {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				p.deliver(ctx, o)
			}()
		}
		wg.Wait()
		total += len(due)
		if len(due) < 256 || ctx.Err() != nil {
			return total, ctx.Err()
		}
	}
}

func (p *Provider) deliver(ctx context.Context, o session.OutboxEntry) {
	err := p.post(ctx, o)
	now := p.now()
	var next time.Time
	errText := ""
	if err != nil {
		errText = err.Error()
		if now.Sub(o.CreatedAt) < p.cfg.Backchannel.RetryFor {
			next = now.Add(p.backoff(o.Attempts))
		}
	}
	if derr := p.store.DeliveryDone(ctx, o, now, err == nil, next, errText); derr != nil {
		p.cfg.Logger.ErrorContext(ctx, "record delivery", "jti", o.JTI, "error", derr)
		return
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
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Backchannel.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.URI, strings.NewReader(url.Values{"logout_token": {token}}.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s answered %s", o.URI, resp.Status)
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
	key := p.keys.Signing()
	if key == nil {
		return "", fmt.Errorf("no signing key")
	}
	signer, err := p.signers.get(key, "logout+jwt")
	if err != nil {
		return "", err
	}
	now := p.now()
	claims := logoutClaims{
		Issuer: p.issuer(), Audience: []string{o.ClientID}, IssuedAt: now.Unix(), Expiry: now.Add(logoutTokenTTL).Unix(),
		JTI: o.JTI, SID: o.SID, Subject: o.Subject, Events: map[string]map[string]any{backchannelEvent: {}}, Reason: string(o.Reason),
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}
