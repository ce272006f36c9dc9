package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
)

// SignalStore is the Shared Signals part of the store.
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

func newStream(t *testing.T, s Store, receiver, method string) *session.Stream {
	t.Helper()
	st := &session.Stream{ID: session.NewID(), Receiver: receiver, Method: method, EventsRequested: []string{session.EventSessionRevoked},
		DeliversSessionRevoked: true, Status: "enabled", CreatedAt: t0}
	if method == session.MethodPush {
		st.EndpointURL = "https://" + receiver + "/events"
	}
	require.NoError(t, s.CreateStream(t.Context(), st, 3))
	return st
}

func testStreams(t *testing.T, s Store) {
	ctx := t.Context()
	a := newStream(t, s, "api", session.MethodPoll)
	newStream(t, s, "api", session.MethodPush)
	newStream(t, s, "api", session.MethodPoll)
	require.ErrorIs(t, s.CreateStream(ctx, &session.Stream{ID: session.NewID(), Receiver: "api", Method: session.MethodPoll, Status: "enabled", CreatedAt: t0}, 3),
		session.ErrConflict, "a fourth stream over the bound")
	other := newStream(t, s, "other", session.MethodPoll)

	got, err := s.Stream(ctx, "api", a.ID)
	require.NoError(t, err)
	require.Equal(t, a.EventsRequested, got.EventsRequested)
	require.True(t, got.DeliversSessionRevoked)
	_, err = s.Stream(ctx, "api", other.ID)
	require.ErrorIs(t, err, session.ErrNotFound, "another receiver's stream")
	list, err := s.Streams(ctx, "api")
	require.NoError(t, err)
	require.Len(t, list, 3)

	a.Method, a.EndpointURL, a.Description = session.MethodPush, "https://api/new", "moved"
	require.NoError(t, s.ReplaceStream(ctx, a))
	got, _ = s.Stream(ctx, "api", a.ID)
	require.Equal(t, "https://api/new", got.EndpointURL)
	other.Receiver = "api"
	require.ErrorIs(t, s.ReplaceStream(ctx, other), session.ErrNotFound, "replacing another receiver's stream")

	require.ErrorIs(t, s.SetStreamStatus(ctx, "api", other.ID, "paused", ""), session.ErrNotFound)
	require.NoError(t, s.SetStreamStatus(ctx, "api", a.ID, "paused", "maintenance"))
	got, _ = s.Stream(ctx, "api", a.ID)
	require.Equal(t, "paused", got.Status)
	require.Equal(t, "maintenance", got.StatusReason)

	require.ErrorIs(t, s.DeleteStream(ctx, "api", other.ID), session.ErrNotFound)
	require.NoError(t, s.DeleteStream(ctx, "api", a.ID))
	_, err = s.Stream(ctx, "api", a.ID)
	require.ErrorIs(t, err, session.ErrNotFound)
}

// endWithSignals ends apps of a, asking for session-revoked events for the
// receivers of each app.
func endWithSignals(t *testing.T, s Store, a *session.AuthSession, at time.Time, receivers map[string][]string, apps ...*session.AppSession) {
	t.Helper()
	end := session.End{At: at, Reason: session.ReasonAppIdleTimeout, UserID: a.UserID}
	for _, app := range apps {
		end.AppSessions = append(end.AppSessions, session.EndedApp{ID: app.ID, ClientID: app.ClientID})
		end.Signals = append(end.Signals, session.SignalNotice{ClientID: app.ClientID, SID: a.ID, Subject: a.UserID,
			Reason: end.Reason, Receivers: receivers[app.ClientID]})
	}
	require.NoError(t, s.EndSessions(t.Context(), end))
}

func pending(t *testing.T, s Store, st *session.Stream) []session.Signal {
	t.Helper()
	out, err := s.PendingSignals(t.Context(), st.Receiver, st.ID, 100)
	require.NoError(t, err)
	return out
}

func testSignalsOnEnd(t *testing.T, s Store) {
	ctx := t.Context()
	poll, push := newStream(t, s, "api", session.MethodPoll), newStream(t, s, "api", session.MethodPush)
	quiet := newStream(t, s, "api", session.MethodPoll)
	quiet.DeliversSessionRevoked = false
	require.NoError(t, s.ReplaceStream(ctx, quiet))
	off := newStream(t, s, "gw", session.MethodPoll)
	require.NoError(t, s.SetStreamStatus(ctx, "gw", off.ID, "disabled", ""))
	stranger := newStream(t, s, "stranger", session.MethodPoll)

	a := newSession(t, s, "u1", t0.Add(time.Hour))
	mail, bank := join(t, s, a, "mail", time.Hour), join(t, s, a, "bank", time.Hour)
	receivers := map[string][]string{"mail": {"api", "gw"}, "bank": {"api"}}
	before, err := s.LastSignalID(ctx)
	require.NoError(t, err)
	endWithSignals(t, s, a, t0.Add(time.Minute), receivers, mail)

	got := pending(t, s, poll)
	require.Len(t, got, 1)
	g := got[0]
	require.Equal(t, session.EventSessionRevoked, g.Event)
	require.Equal(t, a.ID, g.SID)
	require.Equal(t, "u1", g.Subject)
	require.Equal(t, "mail", g.ClientID)
	require.Equal(t, "api", g.Receiver)
	require.Equal(t, session.ReasonAppIdleTimeout, g.Reason)
	require.Equal(t, t0.Add(time.Minute), g.At)
	require.Empty(t, g.PushURI)
	require.NotEmpty(t, g.JTI)
	require.NotEmpty(t, g.Txn)
	pushed := pending(t, s, push)
	require.Len(t, pushed, 1)
	require.Equal(t, push.EndpointURL, pushed[0].PushURI)
	require.NotEqual(t, g.JTI, pushed[0].JTI, "every SET has its own jti")
	require.Equal(t, g.Txn, pushed[0].Txn, "SETs of one end share txn")
	require.Empty(t, pending(t, s, quiet), "a stream that did not ask for session-revoked")
	require.NoError(t, s.SetStreamStatus(ctx, "gw", off.ID, "enabled", ""))
	require.Empty(t, pending(t, s, off), "a disabled stream held nothing")
	require.Empty(t, pending(t, s, stranger), "a receiver that does not serve the app")
	after, err := s.LastSignalID(ctx)
	require.NoError(t, err)
	require.Greater(t, after, before)

	// Ending mail again queues nothing: it is already over.
	endWithSignals(t, s, a, t0.Add(2*time.Minute), receivers, mail)
	require.Len(t, pending(t, s, poll), 1)

	// An end that fails queues nothing (one transaction).
	bad := session.End{At: t0, Reason: session.ReasonLogout, AppSessions: []session.EndedApp{{ID: bank.ID, ClientID: "bank"}},
		Signals:       []session.SignalNotice{{ClientID: "bank", SID: a.ID, Subject: "u1", Reason: session.ReasonLogout, Receivers: []string{"api"}}},
		AuthSessionID: a.ID, IfDue: t0.Add(-time.Hour)}
	require.NoError(t, s.EndSessions(ctx, bad), "a conditional end that is not due is skipped whole")
	require.Len(t, pending(t, s, poll), 1)
}

func testSignalAcks(t *testing.T, s Store) {
	ctx := t.Context()
	poll := newStream(t, s, "api", session.MethodPoll)
	a := newSession(t, s, "u1", t0.Add(time.Hour))
	mail, bank := join(t, s, a, "mail", time.Hour), join(t, s, a, "bank", time.Hour)
	endWithSignals(t, s, a, t0, map[string][]string{"mail": {"api"}, "bank": {"api"}}, mail, bank)
	got := pending(t, s, poll)
	require.Len(t, got, 2)
	require.Equal(t, "mail", got[0].ClientID, "oldest first")
	foreign, err := s.PendingSignals(ctx, "other", poll.ID, 10)
	require.NoError(t, err)
	require.Empty(t, foreign, "only the stream's receiver reads its queue")

	n, err := s.AckSignals(ctx, "other", poll.ID, []session.SignalAck{{JTI: got[0].JTI}}, t0)
	require.NoError(t, err)
	require.Zero(t, n, "only the stream's receiver acknowledges its events")
	n, err = s.AckSignals(ctx, "api", poll.ID, []session.SignalAck{{JTI: got[0].JTI}, {JTI: "unknown"},
		{JTI: got[1].JTI, Err: "invalid_key", Description: "no key"}}, t0.Add(time.Second))
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Empty(t, pending(t, s, poll))
	require.Equal(t, 2, countEvents(t, s, a.ID, session.AuditSignalDelivered))

	// Events nobody collects are purged after their time.
	c := join(t, s, a, "cal", time.Hour)
	endWithSignals(t, s, a, t0.Add(time.Minute), map[string][]string{"cal": {"api"}}, c)
	purged, err := s.PurgeSignals(ctx, t0.Add(time.Minute))
	require.NoError(t, err)
	require.Zero(t, purged)
	purged, err = s.PurgeSignals(ctx, t0.Add(time.Minute+time.Millisecond))
	require.NoError(t, err)
	require.EqualValues(t, 1, purged)
}

func testSignalPushes(t *testing.T, s Store) {
	ctx := t.Context()
	push := newStream(t, s, "api", session.MethodPush)
	poll := newStream(t, s, "api", session.MethodPoll)
	a := newSession(t, s, "u1", t0.Add(time.Hour))
	mail := join(t, s, a, "mail", time.Hour)
	endWithSignals(t, s, a, t0, map[string][]string{"mail": {"api"}}, mail)
	claimPush := func(worker string, now time.Time, uri string) []session.Signal {
		rows, err := s.ClaimSignalPushes(ctx, session.DeliveryClaim{Worker: worker, Now: now, Until: now.Add(time.Minute), URI: uri, Limit: 10})
		require.NoError(t, err)
		return rows
	}
	rows := claimPush("w1", t0, "")
	require.Len(t, rows, 1, "only the push stream's event")
	require.Equal(t, push.ID, rows[0].StreamID)
	require.Empty(t, claimPush("w2", t0, push.EndpointURL), "claimed by w1")

	next := t0.Add(10 * time.Second)
	require.NoError(t, s.SignalPushDone(ctx, rows[0], t0, false, next, "503"))
	require.Empty(t, claimPush("w2", t0.Add(time.Second), ""), "not due before its retry")
	require.NoError(t, s.SetStreamStatus(ctx, "api", push.ID, "paused", ""))
	require.Empty(t, claimPush("w2", next, ""), "a paused stream holds its events")
	require.Empty(t, pending(t, s, push), "and does not give them to a poll")
	require.NoError(t, s.SetStreamStatus(ctx, "api", push.ID, "enabled", ""))
	rows = claimPush("w2", next, push.EndpointURL)
	require.Len(t, rows, 1)
	require.Equal(t, 1, rows[0].Attempts)
	require.NoError(t, s.SignalPushDone(ctx, rows[0], next, true, time.Time{}, ""))
	require.Empty(t, pending(t, s, push))
	require.Len(t, pending(t, s, poll), 1, "the poll stream's copy waits for its ack")
	require.Equal(t, 1, countEvents(t, s, a.ID, session.AuditSignalDelivered))
	require.Equal(t, 1, countEvents(t, s, a.ID, session.AuditSignalRetrying))

	// Abandoned after its retry time: removed, and audited.
	bank := join(t, s, a, "bank", time.Hour)
	endWithSignals(t, s, a, t0, map[string][]string{"bank": {"api"}}, bank)
	rows = claimPush("w3", next, "")
	require.Len(t, rows, 1)
	require.NoError(t, s.SignalPushDone(ctx, rows[0], next, false, time.Time{}, "gone"))
	require.Empty(t, pending(t, s, push))
	require.Equal(t, 1, countEvents(t, s, a.ID, session.AuditSignalAbandoned))
}

func testVerification(t *testing.T, s Store) {
	ctx := t.Context()
	push := newStream(t, s, "api", session.MethodPush)
	sig := session.Signal{StreamID: push.ID, JTI: session.NewID(), State: "xyz", At: t0}
	require.NoError(t, s.RequestVerification(ctx, "api", sig, t0.Add(-time.Minute)))
	again := session.Signal{StreamID: push.ID, JTI: session.NewID(), At: t0.Add(time.Second)}
	require.ErrorIs(t, s.RequestVerification(ctx, "api", again, t0.Add(time.Second-time.Minute)), session.ErrTooSoon)
	require.ErrorIs(t, s.RequestVerification(ctx, "other", again, t0), session.ErrNotFound)
	got := pending(t, s, push)
	require.Len(t, got, 1)
	require.Equal(t, session.EventVerification, got[0].Event)
	require.Equal(t, "xyz", got[0].State)
	require.Equal(t, push.EndpointURL, got[0].PushURI)
	require.NoError(t, s.DeleteStream(ctx, "api", push.ID))
	require.Empty(t, pending(t, s, push), "deleting a stream drops its queue")
}
