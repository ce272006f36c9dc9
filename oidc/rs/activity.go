package rs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"
)

// batchEvent is one event of POST /activity/batch: an application
// session's latest request since the last batch.
type batchEvent struct {
	JTI      string `json:"jti"`
	SID      string `json:"sid"`
	ClientID string `json:"client_id"`
	At       int64  `json:"at"`
}

// maxBatch is the most events the provider takes in one batch.
const maxBatch = 1000

// endReasons are the reasons of a batch result that mean the session is
// over (rather than an event the provider could not match).
var endReasons = []string{"idle_timeout", "max_lifetime", "logout", "app_idle_timeout", "admin", "refresh_reuse", "code_reuse"}

// record notes a request let through: the person of app session s is there.
func (k *Kit) record(c *Claims) {
	if c.SID == "" {
		return
	}
	k.mu.Lock()
	k.activity[appSession{c.SID, c.ClientID}] = batchEvent{JTI: c.JTI, SID: c.SID, ClientID: c.ClientID, At: k.cfg.Now().Unix()}
	k.mu.Unlock()
}

// batchLoop sends the activity of every BatchInterval in one batch.
func (k *Kit) batchLoop(ctx context.Context) {
	tick := time.NewTicker(k.cfg.BatchInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := k.Flush(ctx); err != nil && ctx.Err() == nil {
				k.cfg.Logger.WarnContext(ctx, "rs: activity batch", "error", err)
			}
		}
	}
}

// Flush sends the activity recorded since the last batch now (Run does it
// every BatchInterval). A batch that fails is kept for the next one; a
// session the provider reports over is refused from then on.
func (k *Kit) Flush(ctx context.Context) error {
	k.mu.Lock()
	pending := k.activity
	k.activity = map[appSession]batchEvent{}
	k.mu.Unlock()
	events := make([]batchEvent, 0, len(pending))
	for _, ev := range pending {
		events = append(events, ev)
	}
	for chunk := range slices.Chunk(events, maxBatch) {
		err := k.sendBatch(ctx, chunk)
		if errors.Is(err, errNoBatchEndpoint) {
			k.noBatch.Do(func() {
				k.cfg.Logger.WarnContext(ctx, "rs: the provider has no POST /activity/batch; API traffic is not reported as activity")
			})
			return nil // an older provider: nothing to keep for
		}
		if err != nil {
			k.keep(pending)
			return err
		}
	}
	return nil
}

// errNoBatchEndpoint means the provider answered 404 to a batch.
var errNoBatchEndpoint = errors.New("no activity batch endpoint")

// keep puts unsent activity back, unless newer activity replaced it.
func (k *Kit) keep(unsent map[appSession]batchEvent) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for s, ev := range unsent {
		if cur, ok := k.activity[s]; !ok || cur.At < ev.At {
			k.activity[s] = ev
		}
	}
}

func (k *Kit) sendBatch(ctx context.Context, events []batchEvent) error {
	body, err := json.Marshal(map[string]any{"events": events})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, k.batchEndpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.SetBasicAuth(url.QueryEscape(k.cfg.ClientID), url.QueryEscape(k.cfg.ClientSecret))
	req.Header.Set("Content-Type", "application/json")
	resp, err := k.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	var ans struct {
		Results []struct {
			Live   bool   `json:"live"`
			Reason string `json:"reason"`
		} `json:"results"`
	}
	if status, err := decodeAnswer(resp, &ans); err != nil {
		if status == http.StatusNotFound {
			return errNoBatchEndpoint
		}
		return err
	}
	if len(ans.Results) != len(events) {
		return fmt.Errorf("activity batch: %d results for %d events", len(ans.Results), len(events))
	}
	for i, r := range ans.Results {
		if !r.Live && slices.Contains(endReasons, r.Reason) {
			k.revoke(appSession{events[i].SID, events[i].ClientID}, k.cfg.Now())
		}
	}
	return nil
}
