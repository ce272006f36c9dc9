package session

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// What both backends share: the audit events each write carries, and how an
// End is applied. A backend supplies the statements; the rules live here.

func sessionStartEvent(a *AuthSession) AuditEvent {
	return AuditEvent{At: a.AuthTime, Kind: AuditSessionStart, UserID: a.UserID, SID: a.ID,
		Detail: fmt.Sprintf("idle_limit=%s absolute_deadline=%s", a.IdleLimit, a.AbsoluteDeadline.Format(time.RFC3339))}
}

func appJoinEvent(app *AppSession, auth ActivityUpdate, userID string) AuditEvent {
	return AuditEvent{At: app.JoinedAt, Kind: AuditAppJoin, UserID: userID, SID: app.AuthSessionID, ClientID: app.ClientID,
		Detail: fmt.Sprintf("app_session=%s idle_limit=%s exempt=%t", app.ID, auth.IdleLimit, app.IdleExempt)}
}

// deliveryOutcome is what DeliveryDone records: the audit event and which
// of the three updates of the outbox row applies (its Kind).
func deliveryOutcome(o OutboxEntry, at time.Time, ok bool, next time.Time, errText string) AuditEvent {
	kind := AuditLogoutRetrying
	switch {
	case ok:
		kind = AuditLogoutDelivered
	case next.IsZero():
		kind = AuditLogoutAbandoned
	}
	detail := fmt.Sprintf("jti=%s attempt=%d uri=%s", o.JTI, o.Attempts+1, o.URI)
	if errText != "" {
		detail += " error=" + errText
	}
	return AuditEvent{At: at, Kind: kind, SID: o.SID, UserID: o.Subject, ClientID: o.ClientID, Reason: string(o.Reason), Detail: detail}
}

// staleDelivery marks the audit event of an attempt whose UPDATE changed no
// row (affected 0): the row was delivered elsewhere already, or replaced by a
// later end of the same pair. The attempt is audited all the same.
func staleDelivery(ev AuditEvent, affected int64) AuditEvent {
	if affected == 0 {
		ev.Detail += " stale=true"
	}
	return ev
}

// attachChain records a refresh chain's generation on its application
// session, if that session was loaded.
func attachChain(byID map[string]*AppSession, chainID, appID string, gen int64) {
	a := byID[appID]
	if a == nil {
		return
	}
	if a.RefreshChains == nil {
		a.RefreshChains = map[string]uint64{}
	}
	a.RefreshChains[chainID] = uint64(gen)
}

// endWriter runs the statements of one End inside its transaction.
type endWriter interface {
	// endApp marks a live application session ended; false if it had ended.
	endApp(ctx context.Context, at int64, reason Reason, id string) (bool, error)
	// endAuth marks a live authentication session ended; false if it had ended.
	endAuth(ctx context.Context, at int64, e End) (bool, error)
	addOutbox(ctx context.Context, at int64, n LogoutNotice) error
	writeAudit(ctx context.Context, ev AuditEvent) error
}

// applyEnd writes one End through w. Rows already ended keep their first
// reason, and their logouts (already queued) are not queued again.
func applyEnd(ctx context.Context, w endWriter, e End) error {
	at := ms(e.At)
	// The application sessions first: an end of the authentication session
	// records the apps that ended with it in its own audit event; an app
	// ending alone gets an event of its own.
	var endedApps []string
	endedNow := make(map[string]bool, len(e.AppSessions))
	for _, app := range e.AppSessions {
		ended, err := w.endApp(ctx, at, e.Reason, app.ID)
		if err != nil {
			return fmt.Errorf("end app session %s: %w", app.ID, err)
		}
		if !ended {
			continue // already ended, and its logout already queued
		}
		endedNow[app.ClientID] = true
		if e.AuthSessionID != "" {
			endedApps = append(endedApps, app.ClientID)
			continue
		}
		sid, _, _ := strings.Cut(app.ID, ".")
		if err := w.writeAudit(ctx, AuditEvent{At: e.At, Kind: AuditAppEnd, UserID: e.UserID, SID: sid, ClientID: app.ClientID,
			Reason: string(e.Reason), Initiator: e.Initiator, Detail: "app_session=" + app.ID}); err != nil {
			return err
		}
	}
	if e.AuthSessionID != "" {
		ended, err := w.endAuth(ctx, at, e)
		if err != nil {
			return fmt.Errorf("end auth session %s: %w", e.AuthSessionID, err)
		}
		if ended || len(endedApps) > 0 {
			kind := AuditSessionEnd
			if !ended { // an already-ended session whose remaining apps end now
				kind = AuditAppEnd
			}
			if err := w.writeAudit(ctx, AuditEvent{At: e.At, Kind: kind, UserID: e.UserID, SID: e.AuthSessionID,
				Reason: string(e.Reason), Initiator: e.Initiator, Detail: "apps=" + strings.Join(endedApps, ",")}); err != nil {
				return err
			}
		}
	}
	for _, n := range e.Notices {
		if !endedNow[n.ClientID] {
			continue
		}
		if err := w.addOutbox(ctx, at, n); err != nil {
			return fmt.Errorf("outbox %s: %w", n.ClientID, err)
		}
	}
	return nil
}

// sortDue puts claimed outbox rows in the order they are delivered: oldest
// due first (an UPDATE ... RETURNING promises no order).
func sortDue(rows []OutboxEntry) {
	slices.SortFunc(rows, func(a, b OutboxEntry) int {
		return cmp.Or(a.NextAttemptAt.Compare(b.NextAttemptAt), cmp.Compare(a.ID, b.ID))
	})
}

// purgeBatch bounds the rows one purge statement deletes, so that the
// writer is never held long.
const purgeBatch = 1000

// purgeLoop runs del, a DELETE of at most purgeBatch rows that returns how
// many it deleted, until it deletes fewer, and returns the total.
func purgeLoop(del func() (int64, error)) (int64, error) {
	var total int64
	for {
		n, err := del()
		total += n
		if err != nil {
			return total, fmt.Errorf("purge: %w", err)
		}
		if n < purgeBatch {
			return total, nil
		}
	}
}
