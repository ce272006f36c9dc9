package session

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Shared Signals streams and queued SETs on PostgreSQL, method for method
// as in ssf.go.

// CreateStream stores a new stream unless its receiver has max streams
// already (ErrConflict). A transaction lock per receiver makes replicas
// creating at once count one after the other.
func (p *Postgres) CreateStream(ctx context.Context, st *Stream, max int) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('ssf_streams:' || $1))`, st.Receiver); err != nil {
			return fmt.Errorf("lock streams: %w", err)
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM ssf_streams WHERE receiver = $1`, st.Receiver).Scan(&n); err != nil {
			return fmt.Errorf("count streams: %w", err)
		}
		if n >= max {
			return fmt.Errorf("receiver %s has %d streams already: %w", st.Receiver, n, ErrConflict)
		}
		_, err := tx.Exec(ctx, `INSERT INTO ssf_streams (id, receiver, method, endpoint_url, authorization_header, events_requested,
			description, delivers_session_revoked, status, status_reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
			st.ID, st.Receiver, st.Method, storableText(st.EndpointURL), storableText(st.AuthorizationHeader),
			storableText(strings.Join(st.EventsRequested, " ")), storableText(st.Description), st.DeliversSessionRevoked,
			st.Status, storableText(st.StatusReason), ms(st.CreatedAt))
		if err != nil {
			return fmt.Errorf("create stream: %w", err)
		}
		return nil
	})
}

// Stream returns stream id of receiver; ErrNotFound when it does not exist
// or belongs to another receiver.
func (p *Postgres) Stream(ctx context.Context, receiver, id string) (*Stream, error) {
	if !storable(id) {
		return nil, fmt.Errorf("stream: %w", ErrNotFound)
	}
	st, err := scanStream(p.pool.QueryRow(ctx, `SELECT `+streamCols+` FROM ssf_streams WHERE id = $1 AND receiver = $2`, id, receiver))
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", id, err)
	}
	return st, nil
}

// Streams lists the streams of receiver, oldest first.
func (p *Postgres) Streams(ctx context.Context, receiver string) ([]*Stream, error) {
	return pgQueryAll(ctx, p.pool, scanStream, `SELECT `+streamCols+` FROM ssf_streams WHERE receiver = $1 ORDER BY created_at, id`, receiver)
}

// ReplaceStream writes the receiver-supplied fields of st over the stored
// stream; queued events follow a new delivery endpoint.
func (p *Postgres) ReplaceStream(ctx context.Context, st *Stream) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE ssf_streams SET method = $1, endpoint_url = $2, authorization_header = $3, events_requested = $4,
			description = $5, delivers_session_revoked = $6 WHERE id = $7 AND receiver = $8`, st.Method, storableText(st.EndpointURL),
			storableText(st.AuthorizationHeader), storableText(strings.Join(st.EventsRequested, " ")), storableText(st.Description),
			st.DeliversSessionRevoked, st.ID, st.Receiver)
		if err := pgAffect(tag, err, "stream "+st.ID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE ssf_events SET push_uri = $1 WHERE stream_id = $2`, storableText(st.pushURI()), st.ID); err != nil {
			return fmt.Errorf("move queued events of stream %s: %w", st.ID, err)
		}
		if !st.DeliversSessionRevoked {
			_, err = tx.Exec(ctx, `DELETE FROM ssf_events WHERE stream_id = $1 AND event = $2`, st.ID, EventSessionRevoked)
		}
		return err
	})
}

// DeleteStream deletes a stream of receiver and every event queued on it.
func (p *Postgres) DeleteStream(ctx context.Context, receiver, id string) error {
	if !storable(id) {
		return fmt.Errorf("stream: %w", ErrNotFound)
	}
	tag, err := p.pool.Exec(ctx, `DELETE FROM ssf_streams WHERE id = $1 AND receiver = $2`, id, receiver)
	return pgAffect(tag, err, "stream "+id)
}

// SetStreamStatus sets a stream's status; a disabled stream holds no events.
func (p *Postgres) SetStreamStatus(ctx context.Context, receiver, id, status, reason string) error {
	if !storable(id) {
		return fmt.Errorf("stream: %w", ErrNotFound)
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE ssf_streams SET status = $1, status_reason = $2 WHERE id = $3 AND receiver = $4`,
			status, storableText(reason), id, receiver)
		if err := pgAffect(tag, err, "stream "+id); err != nil {
			return err
		}
		if status == "disabled" {
			_, err = tx.Exec(ctx, `DELETE FROM ssf_events WHERE stream_id = $1`, id)
		}
		return err
	})
}

// RequestVerification queues a verification event on a stream of receiver,
// unless one was requested after notBefore (ErrTooSoon).
func (p *Postgres) RequestVerification(ctx context.Context, receiver string, sig Signal, notBefore time.Time) error {
	if !storable(sig.StreamID) {
		return fmt.Errorf("stream: %w", ErrNotFound)
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		var push string
		err := tx.QueryRow(ctx, `UPDATE ssf_streams SET verified_at = $1 WHERE id = $2 AND receiver = $3 AND status <> 'disabled'
			AND (verified_at IS NULL OR verified_at <= $4) RETURNING CASE WHEN method = $5 THEN endpoint_url ELSE '' END`,
			ms(sig.At), sig.StreamID, receiver, ms(notBefore), MethodPush).Scan(&push)
		if errors.Is(err, pgx.ErrNoRows) {
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM ssf_streams WHERE id = $1 AND receiver = $2 AND status <> 'disabled'`,
				sig.StreamID, receiver).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("stream %s: %w", sig.StreamID, ErrNotFound)
			}
			return fmt.Errorf("verification of stream %s: %w", sig.StreamID, ErrTooSoon)
		}
		if err != nil {
			return fmt.Errorf("verification of stream %s: %w", sig.StreamID, err)
		}
		_, err = tx.Exec(ctx, `INSERT INTO ssf_events (stream_id, receiver, jti, event, state, at, push_uri, next_attempt_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, sig.StreamID, receiver, sig.JTI, EventVerification, storableText(sig.State),
			ms(sig.At), push, ms(sig.At))
		return err
	})
}

// PendingSignals returns up to limit events queued on an enabled stream of
// receiver, oldest first, in one read.
func (p *Postgres) PendingSignals(ctx context.Context, receiver, streamID string, limit int) ([]Signal, error) {
	if !storable(streamID) {
		return nil, nil
	}
	return pgQueryAll(ctx, p.pool, scanSignal, `SELECT `+signalCols+` FROM ssf_events WHERE stream_id = $1 AND receiver = $2
		AND EXISTS (SELECT 1 FROM ssf_streams WHERE id = $1 AND status = 'enabled') ORDER BY id LIMIT $3`, streamID, receiver, limit)
}

// LastSignalID returns the id of the newest queued event (0 when none).
func (p *Postgres) LastSignalID(ctx context.Context) (int64, error) {
	var id int64
	err := p.pool.QueryRow(ctx, `SELECT COALESCE(MAX(id), 0) FROM ssf_events`).Scan(&id)
	return id, err
}

// AckSignals removes the acknowledged events of a stream of receiver, with
// an audit event for each session event, and returns how many it removed.
func (p *Postgres) AckSignals(ctx context.Context, receiver, streamID string, acks []SignalAck, at time.Time) (int, error) {
	if !storable(streamID) {
		return 0, nil
	}
	n := 0
	err := p.tx(ctx, func(tx pgx.Tx) error {
		n = 0
		for _, a := range acks {
			if !storable(a.JTI) {
				continue
			}
			g, err := scanSignal(tx.QueryRow(ctx, `DELETE FROM ssf_events WHERE stream_id = $1 AND receiver = $2 AND jti = $3 RETURNING `+signalCols,
				streamID, receiver, a.JTI))
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return fmt.Errorf("ack %s: %w", a.JTI, err)
			}
			n++
			if ev, ok := signalEvent(AuditSignalDelivered, g, at, ackDetail(a)); ok {
				if err := pgAudit(ctx, tx, ev); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return n, err
}

// ClaimSignalPushes claims due events of enabled push streams for one
// worker, with FOR UPDATE SKIP LOCKED as ClaimDeliveries does.
func (p *Postgres) ClaimSignalPushes(ctx context.Context, c DeliveryClaim) ([]Signal, error) {
	where, args := `push_uri <> ''`, []any{c.Worker, ms(c.Until), ms(c.Now), c.Limit}
	switch {
	case c.URI != "":
		where, args = `push_uri = $5`, append(args, c.URI)
	case len(c.Except) > 0:
		where, args = `push_uri <> '' AND NOT (push_uri = ANY($5))`, append(args, c.Except)
	}
	out, err := pgQueryAll(ctx, p.pool, scanSignal, `WITH due AS (SELECT id FROM ssf_events
			WHERE `+where+` AND next_attempt_at <= $3 AND (claimed_until IS NULL OR claimed_until <= $3)
			AND stream_id IN (SELECT id FROM ssf_streams WHERE status = 'enabled')
			ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
		UPDATE ssf_events SET claimed_by = $1, claimed_until = $2 WHERE id IN (SELECT id FROM due)
		RETURNING `+signalCols, args...)
	if err != nil {
		return nil, fmt.Errorf("claim signal pushes: %w", err)
	}
	sortSignals(out)
	return out, nil
}

// SignalPushDone records one push attempt by the rules of
// SQLite.SignalPushDone.
func (p *Postgres) SignalPushDone(ctx context.Context, g Signal, at time.Time, ok bool, next time.Time, errText string) error {
	errText = storableText(errText)
	return p.tx(ctx, func(tx pgx.Tx) error {
		var tag pgconn.CommandTag
		var err error
		switch {
		case ok:
			tag, err = tx.Exec(ctx, `DELETE FROM ssf_events WHERE id = $1 AND jti = $2`, g.ID, g.JTI)
		case next.IsZero():
			tag, err = tx.Exec(ctx, `DELETE FROM ssf_events WHERE id = $1 AND jti = $2 AND claimed_by = $3`, g.ID, g.JTI, g.ClaimedBy)
		default:
			tag, err = tx.Exec(ctx, `UPDATE ssf_events SET next_attempt_at = $1, attempts = attempts + 1, last_error = $2,
				claimed_by = NULL, claimed_until = NULL WHERE id = $3 AND jti = $4 AND claimed_by = $5`, ms(next), errText, g.ID, g.JTI, g.ClaimedBy)
		}
		if err != nil {
			return fmt.Errorf("signal %d: %w", g.ID, err)
		}
		kind, detail := pushOutcome(ok, next, errText, tag.RowsAffected())
		if ev, ok := signalEvent(kind, g, at, detail); ok {
			return pgAudit(ctx, tx, ev)
		}
		return nil
	})
}

// PurgeSignals deletes events queued before before that nobody collected.
func (p *Postgres) PurgeSignals(ctx context.Context, before time.Time) (int64, error) {
	return p.purgeBatches(ctx, "ssf_events", "id", `at < $1`, ms(before))
}

// addSignals gathers the signal notices of a batch of ends; insert writes
// them in one statement.
func (w *pgEnds) addSignals(_ context.Context, at int64, txn string, n SignalNotice) error {
	w.signals = append(w.signals, pgSignal{at: at, txn: txn, n: n})
	return nil
}

type pgSignal struct {
	at  int64
	txn string
	n   SignalNotice
}

// pgInsertSignals queues the gathered notices on every stream of their
// receivers that delivers session-revoked and is not disabled, with a
// random jti per row.
func pgInsertSignals(ctx context.Context, tx pgx.Tx, signals []pgSignal) error {
	if len(signals) == 0 {
		return nil
	}
	cols := make([][]string, 6)
	at := make([]int64, len(signals))
	for i, g := range signals {
		at[i] = g.at
		for c, v := range []string{g.txn, g.n.SID, g.n.Subject, g.n.ClientID, string(g.n.Reason), strings.Join(g.n.Receivers, " ")} {
			cols[c] = append(cols[c], storableText(v))
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO ssf_events (stream_id, receiver, jti, txn, event, sid, subject, client_id, reason, at, push_uri, next_attempt_at)
		SELECT s.id, s.receiver, md5(random()::text || clock_timestamp()::text || s.id), v.txn, $8, v.sid, v.subject, v.client_id, v.reason,
			v.at, CASE WHEN s.method = $9 THEN s.endpoint_url ELSE '' END, v.at
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
			WITH ORDINALITY AS v(txn, sid, subject, client_id, reason, receivers, at, n)
		JOIN ssf_streams s ON s.receiver = ANY(string_to_array(v.receivers, ' ')) AND s.delivers_session_revoked AND s.status <> 'disabled'
		ORDER BY v.n, s.id`, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], at, EventSessionRevoked, MethodPush)
	if err != nil {
		return fmt.Errorf("signals: %w", err)
	}
	return nil
}
