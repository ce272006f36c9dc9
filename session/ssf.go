package session

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Event type URIs and delivery methods of the Shared Signals Framework 1.0
// and CAEP 1.0 that the provider transmits.
const (
	EventSessionRevoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	EventVerification   = "https://schemas.openid.net/secevent/ssf/event-type/verification"
	MethodPush          = "urn:ietf:rfc:8935"
	MethodPoll          = "urn:ietf:rfc:8936"
)

// ErrTooSoon is returned when a stream's verification is requested again
// before its minimum interval has passed.
var ErrTooSoon = errors.New("too soon")

// Stream is one SSF event stream of a receiver (a resource server).
type Stream struct {
	ID                  string
	Receiver            string // the resource server's client id
	Method              string // MethodPush or MethodPoll
	EndpointURL         string // push: the receiver's URL; poll: empty (the provider's is derived from ID)
	AuthorizationHeader string // push: sent with every POST
	EventsRequested     []string
	Description         string
	// DeliversSessionRevoked says whether session-revoked is among the
	// events delivered on the stream.
	DeliversSessionRevoked bool
	Status                 string // enabled, paused or disabled
	StatusReason           string
	CreatedAt              time.Time
	VerifiedAt             time.Time // the last verification request; zero if none
}

// SignalNotice asks for a CAEP session-revoked event about the end of one
// application session, on every stream of Receivers (the resource servers
// that serve ClientID) that delivers it.
type SignalNotice struct {
	ClientID  string
	SID       string
	Subject   string
	Reason    Reason
	Receivers []string
}

// Signal is one Security Event Token queued on a stream, until the
// receiver acknowledges it (poll) or accepts it (push).
type Signal struct {
	ID            int64
	StreamID      string
	Receiver      string // the stream's receiver: the SET's aud
	JTI           string
	Txn           string // shared by the SETs of one end
	Event         string // an event type URI
	SID           string
	Subject       string
	ClientID      string // the app whose session ended
	Reason        Reason
	State         string // verification: the receiver's state
	At            time.Time
	PushURI       string // empty for poll streams
	NextAttemptAt time.Time
	Attempts      int
	LastError     string
	ClaimedBy     string
	ClaimedUntil  time.Time
}

// SignalAck is a receiver's acknowledgement of one SET (RFC 8936 section
// 2.4): received and processed, or received with an error (Err set).
type SignalAck struct {
	JTI         string
	Err         string
	Description string
}

// Audit event kinds of Shared Signals deliveries.
const (
	AuditSignalDelivered = "signal_delivered"
	AuditSignalRetrying  = "signal_retrying"
	AuditSignalAbandoned = "signal_abandoned"
)

const streamCols = `id, receiver, method, endpoint_url, authorization_header, events_requested, description,
	delivers_session_revoked, status, status_reason, created_at, verified_at`

func scanStream(row scanner) (*Stream, error) {
	var s Stream
	var events string
	var created int64
	var verified sql.NullInt64
	err := row.Scan(&s.ID, &s.Receiver, &s.Method, &s.EndpointURL, &s.AuthorizationHeader, &events, &s.Description,
		&s.DeliversSessionRevoked, &s.Status, &s.StatusReason, &created, &verified)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	s.EventsRequested = strings.Fields(events)
	s.CreatedAt, s.VerifiedAt = fromMS(created), fromNullMS(verified)
	return &s, err
}

// pushURI is where a stream's events go: its endpoint for push, none for poll.
func (s *Stream) pushURI() string {
	if s.Method == MethodPush {
		return s.EndpointURL
	}
	return ""
}

// CreateStream stores a new stream unless its receiver already has max
// streams (ErrConflict), in one transaction so that concurrent creations at
// several replicas cannot pass the bound together.
func (s *SQLite) CreateStream(ctx context.Context, st *Stream, max int) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM ssf_streams WHERE receiver = ?`, st.Receiver).Scan(&n); err != nil {
			return fmt.Errorf("count streams: %w", err)
		}
		if n >= max {
			return fmt.Errorf("receiver %s has %d streams already: %w", st.Receiver, n, ErrConflict)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO ssf_streams (id, receiver, method, endpoint_url, authorization_header, events_requested,
			description, delivers_session_revoked, status, status_reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			st.ID, st.Receiver, st.Method, st.EndpointURL, st.AuthorizationHeader, strings.Join(st.EventsRequested, " "),
			st.Description, st.DeliversSessionRevoked, st.Status, st.StatusReason, ms(st.CreatedAt))
		if err != nil {
			return fmt.Errorf("create stream: %w", err)
		}
		return nil
	})
}

// Stream returns stream id of receiver; ErrNotFound when it does not exist
// or belongs to another receiver.
func (s *SQLite) Stream(ctx context.Context, receiver, id string) (*Stream, error) {
	st, err := scanStream(s.signals.stream.QueryRowContext(ctx, id, receiver))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", id, err)
	}
	return st, nil
}

// Streams lists the streams of receiver, oldest first.
func (s *SQLite) Streams(ctx context.Context, receiver string) ([]*Stream, error) {
	return queryAll(ctx, s.r, scanStream, `SELECT `+streamCols+` FROM ssf_streams WHERE receiver = ? ORDER BY created_at, id`, receiver)
}

// ReplaceStream writes the receiver-supplied fields of st (and what follows
// from them) over the stored stream; events already queued follow a new
// delivery endpoint.
func (s *SQLite) ReplaceStream(ctx context.Context, st *Stream) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE ssf_streams SET method = ?, endpoint_url = ?, authorization_header = ?, events_requested = ?,
			description = ?, delivers_session_revoked = ? WHERE id = ? AND receiver = ?`, st.Method, st.EndpointURL, st.AuthorizationHeader,
			strings.Join(st.EventsRequested, " "), st.Description, st.DeliversSessionRevoked, st.ID, st.Receiver)
		if err := mustAffect(res, err, "stream "+st.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE ssf_events SET push_uri = ? WHERE stream_id = ?`,
			st.pushURI(), st.ID); err != nil {
			return fmt.Errorf("move queued events of stream %s: %w", st.ID, err)
		}
		if !st.DeliversSessionRevoked {
			_, err = tx.ExecContext(ctx, `DELETE FROM ssf_events WHERE stream_id = ? AND event = ?`, st.ID, EventSessionRevoked)
		}
		return err
	})
}

// DeleteStream deletes a stream of receiver and every event queued on it.
func (s *SQLite) DeleteStream(ctx context.Context, receiver, id string) error {
	res, err := s.w.ExecContext(ctx, `DELETE FROM ssf_streams WHERE id = ? AND receiver = ?`, id, receiver)
	return mustAffect(res, err, "stream "+id)
}

// SetStreamStatus sets a stream's status. A disabled stream holds no
// events (SSF 1.0 section 8.1.2): those queued are dropped.
func (s *SQLite) SetStreamStatus(ctx context.Context, receiver, id, status, reason string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE ssf_streams SET status = ?, status_reason = ? WHERE id = ? AND receiver = ?`, status, reason, id, receiver)
		if err := mustAffect(res, err, "stream "+id); err != nil {
			return err
		}
		if status == "disabled" {
			_, err = tx.ExecContext(ctx, `DELETE FROM ssf_events WHERE stream_id = ?`, id)
		}
		return err
	})
}

// RequestVerification queues a verification event on a stream of receiver,
// unless one was requested after notBefore (ErrTooSoon).
func (s *SQLite) RequestVerification(ctx context.Context, receiver string, sig Signal, notBefore time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var push string
		err := tx.QueryRowContext(ctx, `UPDATE ssf_streams SET verified_at = ? WHERE id = ? AND receiver = ? AND status != 'disabled'
			AND (verified_at IS NULL OR verified_at <= ?) RETURNING CASE WHEN method = ? THEN endpoint_url ELSE '' END`,
			ms(sig.At), sig.StreamID, receiver, ms(notBefore), MethodPush).Scan(&push)
		if errors.Is(err, sql.ErrNoRows) {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM ssf_streams WHERE id = ? AND receiver = ? AND status != 'disabled'`,
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
		_, err = tx.ExecContext(ctx, `INSERT INTO ssf_events (stream_id, receiver, jti, event, state, at, push_uri, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			sig.StreamID, receiver, sig.JTI, EventVerification, sig.State, ms(sig.At), push, ms(sig.At))
		return err
	})
}

const signalCols = `id, stream_id, receiver, jti, txn, event, sid, subject, client_id, reason, state, at, push_uri, next_attempt_at, attempts, last_error, claimed_by, claimed_until`

func scanSignal(row scanner) (Signal, error) {
	var g Signal
	var reason string
	var at, next int64
	var claimedBy sql.NullString
	var claimedUntil sql.NullInt64
	err := row.Scan(&g.ID, &g.StreamID, &g.Receiver, &g.JTI, &g.Txn, &g.Event, &g.SID, &g.Subject, &g.ClientID, &reason, &g.State, &at, &g.PushURI,
		&next, &g.Attempts, &g.LastError, &claimedBy, &claimedUntil)
	g.Reason, g.At, g.NextAttemptAt = Reason(reason), fromMS(at), fromMS(next)
	g.ClaimedBy, g.ClaimedUntil = claimedBy.String, fromNullMS(claimedUntil)
	return g, err
}

// PendingSignals returns up to limit events queued on a stream of
// receiver, oldest first, if the stream is enabled (a paused stream holds
// its events; SSF 1.0 section 8.1.2): one read, for the poll's hot path.
func (s *SQLite) PendingSignals(ctx context.Context, receiver, streamID string, limit int) ([]Signal, error) {
	rows, err := s.signals.pending.QueryContext(ctx, streamID, receiver, limit)
	if err != nil {
		return nil, err
	}
	return scanAll(rows, scanSignal)
}

// signalStmts are the statements of a long poll's hot path, prepared once:
// SQLite parses a statement anew on every unprepared call, which is most
// of a poll's cost when an end wakes a hundred of them.
type signalStmts struct {
	stream, pending *sql.Stmt // on the read pool
	ack, audit      *sql.Stmt // on the writer, used inside transactions
}

func (st *signalStmts) prepare(ctx context.Context, r, w *sql.DB) error {
	var err error
	prep := func(db *sql.DB, q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var stmt *sql.Stmt
		stmt, err = db.PrepareContext(ctx, q)
		return stmt
	}
	st.stream = prep(r, `SELECT `+streamCols+` FROM ssf_streams WHERE id = ? AND receiver = ?`)
	st.pending = prep(r, `SELECT `+signalCols+` FROM ssf_events WHERE stream_id = ?1 AND receiver = ?2
		AND EXISTS (SELECT 1 FROM ssf_streams WHERE id = ?1 AND status = 'enabled') ORDER BY id LIMIT ?3`)
	st.ack = prep(w, `DELETE FROM ssf_events WHERE stream_id = ? AND receiver = ? AND jti = ? RETURNING `+signalCols)
	st.audit = prep(w, insertAudit)
	return err
}

func (st *signalStmts) close() error {
	var errs []error
	for _, stmt := range []*sql.Stmt{st.stream, st.pending, st.ack, st.audit} {
		if stmt != nil {
			errs = append(errs, stmt.Close())
		}
	}
	return errors.Join(errs...)
}

// LastSignalID returns the id of the newest queued event (0 when none): a
// process that holds long polls watches it for events written elsewhere.
func (s *SQLite) LastSignalID(ctx context.Context) (int64, error) {
	var id int64
	err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM ssf_events`).Scan(&id)
	return id, err
}

// AckSignals removes the acknowledged events of a stream (RFC 8936
// section 2.4: acknowledged SETs are not sent again) with an audit event
// for each session event, and returns how many it removed. Unknown jtis
// are ignored.
func (s *SQLite) AckSignals(ctx context.Context, receiver, streamID string, acks []SignalAck, at time.Time) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		ack, audit := tx.StmtContext(ctx, s.signals.ack), tx.StmtContext(ctx, s.signals.audit)
		for _, a := range acks {
			g, err := scanSignal(ack.QueryRowContext(ctx, streamID, receiver, a.JTI))
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return fmt.Errorf("ack %s: %w", a.JTI, err)
			}
			n++
			if ev, ok := signalEvent(AuditSignalDelivered, g, at, ackDetail(a)); ok {
				if err := addAudit(ctx, audit, ev); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return n, err
}

// auditSignal records what happened to a session event; verification
// events, which concern no session, are not audited.
func auditSignal(ctx context.Context, e execer, kind string, g Signal, at time.Time, detail string) error {
	if ev, ok := signalEvent(kind, g, at, detail); ok {
		return addAudit(ctx, auditVia{e}, ev)
	}
	return nil
}

// signalEvent is the audit event of what happened to event g (kind), and
// whether there is one: verification events concern no session.
func signalEvent(kind string, g Signal, at time.Time, detail string) (AuditEvent, bool) {
	return AuditEvent{At: at, Kind: kind, UserID: g.Subject, SID: g.SID, ClientID: g.Receiver, Reason: string(g.Reason),
		Detail: strings.TrimSpace(fmt.Sprintf("jti=%s stream=%s app=%s attempt=%d %s", g.JTI, g.StreamID, g.ClientID, g.Attempts+1, detail))}, g.SID != ""
}

// ackDetail is the audit detail of an acknowledgement.
func ackDetail(a SignalAck) string {
	if a.Err == "" {
		return ""
	}
	return "err=" + a.Err + " " + a.Description
}

// pushOutcome is the audit kind of a push attempt and its detail, as
// deliveryOutcome is for a logout.
func pushOutcome(ok bool, next time.Time, errText string, affected int64) (string, string) {
	kind := AuditSignalRetrying
	switch {
	case ok:
		kind = AuditSignalDelivered
	case next.IsZero():
		kind = AuditSignalAbandoned
	}
	detail := ""
	if errText != "" {
		detail = "error=" + errText
	}
	if affected == 0 {
		detail += " stale=true"
	}
	return kind, detail
}

// ClaimSignalPushes claims due events of push streams that are enabled, as
// ClaimDeliveries claims logout rows: atomically, for one worker, until
// c.Until.
func (s *SQLite) ClaimSignalPushes(ctx context.Context, c DeliveryClaim) ([]Signal, error) {
	where, args := `push_uri = ?`, []any{c.Worker, ms(c.Until), c.URI}
	switch {
	case c.URI != "":
	case len(c.Except) > 0:
		in, except := placeholders(c.Except)
		where, args = `push_uri != '' AND push_uri NOT IN (`+in+`)`, append(args[:2], except...)
	default:
		where, args = `push_uri != ''`, args[:2]
	}
	args = append(args, ms(c.Now), ms(c.Now), c.Limit)
	out, err := queryAll(ctx, s.w, scanSignal, `UPDATE ssf_events SET claimed_by = ?, claimed_until = ?
		WHERE id IN (SELECT id FROM ssf_events WHERE `+where+` AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?)
			AND stream_id IN (SELECT id FROM ssf_streams WHERE status = 'enabled') ORDER BY next_attempt_at, id LIMIT ?)
		RETURNING `+signalCols, args...)
	if err != nil {
		return nil, fmt.Errorf("claim signal pushes: %w", err)
	}
	sortSignals(out)
	return out, nil
}

// sortSignals orders claimed events oldest due first.
func sortSignals(out []Signal) {
	slices.SortFunc(out, func(a, b Signal) int {
		return cmp.Or(a.NextAttemptAt.Compare(b.NextAttemptAt), cmp.Compare(a.ID, b.ID))
	})
}

// SignalPushDone records one push attempt, as DeliveryDone does for a
// logout: accepted (the event is removed), a retry at next, or abandoned
// (next zero and not ok; removed). A failure is recorded only by the
// worker that still holds the claim.
func (s *SQLite) SignalPushDone(ctx context.Context, g Signal, at time.Time, ok bool, next time.Time, errText string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var res sql.Result
		var err error
		switch {
		case ok:
			res, err = tx.ExecContext(ctx, `DELETE FROM ssf_events WHERE id = ? AND jti = ?`, g.ID, g.JTI)
		case next.IsZero():
			res, err = tx.ExecContext(ctx, `DELETE FROM ssf_events WHERE id = ? AND jti = ? AND claimed_by = ?`, g.ID, g.JTI, g.ClaimedBy)
		default:
			res, err = tx.ExecContext(ctx, `UPDATE ssf_events SET next_attempt_at = ?, attempts = attempts + 1, last_error = ?,
				claimed_by = NULL, claimed_until = NULL WHERE id = ? AND jti = ? AND claimed_by = ?`, ms(next), errText, g.ID, g.JTI, g.ClaimedBy)
		}
		if err != nil {
			return fmt.Errorf("signal %d: %w", g.ID, err)
		}
		n, _ := res.RowsAffected()
		kind, detail := pushOutcome(ok, next, errText, n)
		return auditSignal(ctx, tx, kind, g, at, detail)
	})
}

// PurgeSignals deletes events queued before before that nobody collected
// (a poll stream whose receiver went away), and returns how many.
func (s *SQLite) PurgeSignals(ctx context.Context, before time.Time) (int64, error) {
	return s.purgeBatches(ctx, "ssf_events", "id", `at < ?`, ms(before))
}

// insertSignals queues one session-revoked event per stream of the notice's
// receivers that delivers it and is not disabled; jti is random per row.
const insertSignals = `INSERT INTO ssf_events (stream_id, receiver, jti, txn, event, sid, subject, client_id, reason, at, push_uri, next_attempt_at)
	SELECT id, receiver, lower(hex(randomblob(16))), ?, '` + EventSessionRevoked + `', ?, ?, ?, ?, ?, CASE WHEN method = '` + MethodPush + `' THEN endpoint_url ELSE '' END, ?
	FROM ssf_streams WHERE receiver IN (SELECT value FROM json_each(?)) AND delivers_session_revoked = 1 AND status != 'disabled'`

func (st *endStmts) addSignals(ctx context.Context, at int64, txn string, n SignalNotice) error {
	receivers, err := json.Marshal(n.Receivers)
	if err != nil {
		return err
	}
	_, err = st.signals.ExecContext(ctx, txn, n.SID, n.Subject, n.ClientID, string(n.Reason), at, at, string(receivers))
	return err
}
