package rs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// streamConfig is the part of an SSF stream configuration the kit reads.
type streamConfig struct {
	StreamID        string   `json:"stream_id"`
	Issuer          string   `json:"iss"`
	Audience        string   `json:"aud"`
	EventsDelivered []string `json:"events_delivered"`
	Description     string   `json:"description"`
	Delivery        struct {
		Method      string `json:"method"`
		EndpointURL string `json:"endpoint_url"`
	} `json:"delivery"`
}

// ensureStream finds the kit's poll stream at the provider (one it made
// before a restart, whose queue holds what happened meanwhile), or creates
// one.
func (k *Kit) ensureStream(ctx context.Context) error {
	var list []streamConfig
	if _, err := k.call(ctx, http.MethodGet, k.configurationEndpoint, nil, &list); err != nil {
		return fmt.Errorf("list streams: %w", err)
	}
	i := slices.IndexFunc(list, func(s streamConfig) bool {
		return s.Description == streamDescription && s.Delivery.Method == methodPoll && slices.Contains(s.EventsDelivered, eventSessionRevoked)
	})
	var st streamConfig
	if i >= 0 {
		st = list[i]
	} else {
		req := map[string]any{"delivery": map[string]string{"method": methodPoll}, "events_requested": []string{eventSessionRevoked},
			"description": streamDescription}
		if _, err := k.call(ctx, http.MethodPost, k.configurationEndpoint, req, &st); err != nil {
			return fmt.Errorf("create stream: %w", err)
		}
	}
	if st.Issuer != k.cfg.Issuer || st.Audience != k.cfg.ClientID || st.Delivery.EndpointURL == "" {
		return fmt.Errorf("stream %s: iss %q aud %q: not this provider's stream for this client", st.StreamID, st.Issuer, st.Audience)
	}
	k.mu.Lock()
	k.streamID, k.pollURL = st.StreamID, st.Delivery.EndpointURL
	k.mu.Unlock()
	return nil
}

type pollAnswer struct {
	Sets          map[string]string `json:"sets"`
	MoreAvailable bool              `json:"moreAvailable"`
}

// pollLoop long-polls the stream, applies what it receives and
// acknowledges it with the next poll. Failures (the provider restarting)
// are retried with a backoff by the wall clock.
func (k *Kit) pollLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := k.pollOnce(ctx)
		if err == nil {
			backoff = 100 * time.Millisecond
			continue
		}
		if ctx.Err() != nil {
			return
		}
		k.cfg.Logger.WarnContext(ctx, "rs: poll for session ends", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// errStreamGone means the stream was deleted at the provider.
var errStreamGone = errors.New("stream not found")

// pollOnce makes one poll (creating the stream first if needed).
func (k *Kit) pollOnce(ctx context.Context) error {
	k.mu.Lock()
	pollURL, acks := k.pollURL, slices.Clone(k.acks)
	k.mu.Unlock()
	if pollURL == "" {
		return k.ensureStream(ctx)
	}
	var ans pollAnswer
	status, err := k.call(ctx, http.MethodPost, pollURL, map[string]any{"ack": acks, "maxEvents": 100, "returnImmediately": false}, &ans)
	if status == http.StatusNotFound {
		k.mu.Lock()
		k.pollURL, k.acks = "", nil
		k.mu.Unlock()
		return errStreamGone
	}
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.acks = slices.DeleteFunc(k.acks, func(j string) bool { return slices.Contains(acks, j) })
	k.mu.Unlock()
	for jti, set := range ans.Sets {
		if err := k.apply(ctx, set); err != nil {
			k.cfg.Logger.WarnContext(ctx, "rs: SET not applied", "jti", jti, "error", err)
			continue // not acknowledged: it comes again
		}
		k.mu.Lock()
		k.acks = append(k.acks, jti)
		k.mu.Unlock()
	}
	k.prune()
	return nil
}

// setClaims are the claims of a SET the kit reads.
type setClaims struct {
	Issuer   string                     `json:"iss"`
	Audience any                        `json:"aud"`
	JTI      string                     `json:"jti"`
	Subject  *string                    `json:"sub"`
	Expiry   *int64                     `json:"exp"`
	SubID    subjectID                  `json:"sub_id"`
	Events   map[string]json.RawMessage `json:"events"`
}

type subjectID struct {
	Format      string     `json:"format"`
	ID          string     `json:"id"`
	Session     *subjectID `json:"session"`
	Application *subjectID `json:"application"`
}

// apply verifies one SET (RFC 8417 and SSF 1.0: typ secevent+jwt, the
// provider's signature, iss, aud, no sub or exp) and applies it.
func (k *Kit) apply(ctx context.Context, raw string) error {
	payload, err := k.keys.verifyJWT(ctx, raw, "secevent+jwt")
	if err != nil {
		return err
	}
	var c setClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return err
	}
	if c.Issuer != k.cfg.Issuer || c.Audience != k.cfg.ClientID || c.Subject != nil || c.Expiry != nil {
		return errors.New("iss, aud, sub or exp is not a SET's of this stream")
	}
	if raw, ok := c.Events[eventSessionRevoked]; ok {
		return k.applyRevoked(c.SubID, raw)
	}
	if _, ok := c.Events[eventVerification]; ok {
		return nil
	}
	return nil // an event type the kit does not act on: received all the same
}

func (k *Kit) applyRevoked(sub subjectID, raw json.RawMessage) error {
	var ev struct {
		EventTimestamp int64 `json:"event_timestamp"`
	}
	if err := json.Unmarshal(raw, &ev); err != nil {
		return err
	}
	if sub.Format != "complex" || sub.Session == nil || sub.Session.ID == "" || sub.Application == nil || sub.Application.ID == "" {
		return errors.New("session-revoked without session and application")
	}
	at := time.Unix(ev.EventTimestamp, 0)
	if ev.EventTimestamp == 0 {
		at = k.cfg.Now()
	}
	k.revoke(appSession{sub.Session.ID, sub.Application.ID}, at)
	return nil
}
