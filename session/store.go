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

func reauthenticatedEvent(a *AuthSession) AuditEvent {
	return AuditEvent{At: a.AuthTime, Kind: AuditSessionReauthented, UserID: a.UserID, SID: a.ID}
}

func totpEnrolledEvent(f TOTPFactor, recoveryCodes int, by string) AuditEvent {
	return AuditEvent{At: f.CreatedAt, Kind: AuditFactorEnrolled, UserID: f.UserID, Initiator: by,
		Detail: fmt.Sprintf("factor=totp recovery_codes=%d", recoveryCodes)}
}

func passkeyEnrolledEvent(c WebAuthnCredential, by string) AuditEvent {
	return AuditEvent{At: c.CreatedAt, Kind: AuditFactorEnrolled, UserID: c.UserID, Initiator: by, Detail: "factor=passkey name=" + c.Name}
}

// factorRemovedEvent records the removal of factor (passkey, or all).
func factorRemovedEvent(userID, factor string, at time.Time, by string) AuditEvent {
	return AuditEvent{At: at, Kind: AuditFactorRemoved, UserID: userID, Initiator: by, Detail: "factor=" + factor}
}

func stepUpEvent(a *AuthSession, at time.Time, detail string) AuditEvent {
	return AuditEvent{At: at, Kind: AuditStepUp, UserID: a.UserID, SID: a.ID, Detail: "amr=" + strings.Join(a.AMR, ",") + " " + detail}
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
	if strings.HasPrefix(o.LastError, lapsedClaimNote) {
		detail += " lapsed_claim=true"
	}
	if errText != "" {
		detail += " error=" + errText
	}
	return AuditEvent{At: at, Kind: kind, SID: o.SID, UserID: o.Subject, ClientID: o.ClientID, Reason: string(o.Reason), Detail: detail}
}

// lapsedClaimNote begins an outbox row's last_error when a worker claims it
// from one whose claim lapsed (a replica that died, or hung, mid-delivery):
// that attempt's outcome is unknown, so the app may get this jti twice. The
// next attempt's audit event says so (lapsed_claim=true): a killed worker
// cannot audit its own attempt, so this is where the duplicate is counted.
const lapsedClaimNote = "claim lapsed: "

// claimNoteSQL is the assignment a claim makes: it notes a lapsed claim
// (claimed_by is set only while a claim is held, or after it lapsed).
const claimNoteSQL = `last_error = CASE WHEN claimed_by IS NULL THEN last_error
	ELSE '` + lapsedClaimNote + `' || claimed_by || ' may have delivered it' END`

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
	// endApp marks a live application session ended, and when due > 0
	// only if its stored deadline is at or before due; false if it did not.
	endApp(ctx context.Context, at int64, reason Reason, id string, due int64) (bool, error)
	// endAuth is endApp for the authentication session of e.
	endAuth(ctx context.Context, at int64, e End, due int64) (bool, error)
	addOutbox(ctx context.Context, at int64, n LogoutNotice) error
	writeAudit(ctx context.Context, ev AuditEvent) error
	// addChange writes a change feed row for authentication session sid.
	addChange(ctx context.Context, sid string, at int64) error
	// addSignals queues n's session-revoked event on every stream of its
	// receivers that delivers it, each with a fresh jti and txn shared by
	// the SETs of one end.
	addSignals(ctx context.Context, at int64, txn string, n SignalNotice) error
}

// applyEnd writes one End through w. Rows already ended keep their first
// reason, and their logouts (already queued) are not queued again. Every
// end that changed something writes a change feed row, so that the other
// replicas learn of it.
//
// An End with IfDue (a sweeper's) is conditional on the stored deadline:
// when its authentication session is no longer due (activity written
// meanwhile moved the deadline) or already ended, the End is skipped whole;
// an End of application sessions alone ends only those still due.
func applyEnd(ctx context.Context, w endWriter, e End) error {
	at := ms(e.At)
	authEnded := false
	if e.AuthSessionID != "" && !e.IfDue.IsZero() {
		ended, err := w.endAuth(ctx, at, e, ms(e.IfDue))
		if err != nil {
			return fmt.Errorf("end auth session %s: %w", e.AuthSessionID, err)
		}
		if !ended {
			return nil // ended already, or no longer due
		}
		authEnded = true
	}
	endedApps, endedNow, err := endApps(ctx, w, e, at)
	if err != nil {
		return err
	}
	if e.AuthSessionID != "" {
		if err := endAuthSession(ctx, w, e, at, authEnded, endedApps); err != nil {
			return err
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
	return queueSignals(ctx, w, e, at, endedNow)
}

// queueSignals queues the Shared Signals events of the apps of e that
// ended now (SignalNotice), in the end's transaction.
func queueSignals(ctx context.Context, w endWriter, e End, at int64, endedNow map[string]bool) error {
	txn := ""
	for _, n := range e.Signals {
		if !endedNow[n.ClientID] || len(n.Receivers) == 0 {
			continue
		}
		if txn == "" {
			txn = NewID()
		}
		if err := w.addSignals(ctx, at, txn, n); err != nil {
			return fmt.Errorf("signals of %s: %w", n.ClientID, err)
		}
	}
	return nil
}

// endApps ends the application sessions of e, and returns the clients of
// those that ended now with the authentication session (recorded in its
// audit event) and the set of every client that ended now. An app ending
// alone gets an audit event and a change feed row of its own.
func endApps(ctx context.Context, w endWriter, e End, at int64) ([]string, map[string]bool, error) {
	var due int64
	if e.AuthSessionID == "" && !e.IfDue.IsZero() {
		due = ms(e.IfDue)
	}
	var endedApps []string
	endedNow := make(map[string]bool, len(e.AppSessions))
	for _, app := range e.AppSessions {
		ended, err := w.endApp(ctx, at, e.Reason, app.ID, due)
		if err != nil {
			return nil, nil, fmt.Errorf("end app session %s: %w", app.ID, err)
		}
		if !ended {
			continue // already ended (its logout already queued), or not due
		}
		endedNow[app.ClientID] = true
		if e.AuthSessionID != "" {
			endedApps = append(endedApps, app.ClientID)
			continue
		}
		sid := SplitAppSessionID(app.ID)
		if err := w.writeAudit(ctx, AuditEvent{At: e.At, Kind: AuditAppEnd, UserID: e.UserID, SID: sid, ClientID: app.ClientID,
			Reason: string(e.Reason), Initiator: e.Initiator, Detail: "app_session=" + app.ID}); err != nil {
			return nil, nil, err
		}
		if err := w.addChange(ctx, sid, at); err != nil {
			return nil, nil, fmt.Errorf("change feed: %w", err)
		}
	}
	return endedApps, endedNow, nil
}

// endAuthSession ends the authentication session of e (unless done, by the
// conditional end), and records the end with the apps that ended with it.
func endAuthSession(ctx context.Context, w endWriter, e End, at int64, done bool, endedApps []string) error {
	ended := done
	if !done {
		var err error
		if ended, err = w.endAuth(ctx, at, e, 0); err != nil {
			return fmt.Errorf("end auth session %s: %w", e.AuthSessionID, err)
		}
	}
	if !ended && len(endedApps) == 0 {
		return nil
	}
	kind := AuditSessionEnd
	if !ended { // an already-ended session whose remaining apps end now
		kind = AuditAppEnd
	}
	if err := w.writeAudit(ctx, AuditEvent{At: e.At, Kind: kind, UserID: e.UserID, SID: e.AuthSessionID,
		Reason: string(e.Reason), Initiator: e.Initiator, Detail: "apps=" + strings.Join(endedApps, ",")}); err != nil {
		return err
	}
	if err := w.addChange(ctx, e.AuthSessionID, at); err != nil {
		return fmt.Errorf("change feed: %w", err)
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

// purgeQuery is a DELETE of at most purgeBatch rows of table (whose key
// column is key) among those that match where.
func purgeQuery(table, key, where string) string {
	return fmt.Sprintf(`DELETE FROM %[1]s WHERE %[2]s IN (SELECT %[2]s FROM %[1]s WHERE %[3]s LIMIT %[4]d)`, table, key, where, purgeBatch)
}

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
