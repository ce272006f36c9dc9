package session

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"time"
)

// ErrNotFound is returned when a looked-up row does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned when a write would break a uniqueness rule (a second
// live application session for the same pair, a reused name).
var ErrConflict = errors.New("conflict")

// ErrCodeReused is returned when an authorization code that was already
// redeemed is presented again.
var ErrCodeReused = errors.New("authorization code already redeemed")

// Reason says why a session ended. The values are part of the public surface:
// they appear in audit events, the admin API and the `reason` claim of
// back-channel logout tokens.
type Reason string

// The reasons a session can end, from docs/idle-model.md.
const (
	ReasonIdleTimeout    Reason = "idle_timeout"
	ReasonMaxLifetime    Reason = "max_lifetime"
	ReasonLogout         Reason = "logout"
	ReasonAppIdleTimeout Reason = "app_idle_timeout"
	ReasonAdmin          Reason = "admin"
	ReasonRefreshReuse   Reason = "refresh_reuse"
	ReasonCodeReuse      Reason = "code_reuse" // an authorization code was presented again after its exchange
)

// User is a person who can sign in.
type User struct {
	ID            string
	Username      string
	PasswordHash  string
	Name          string
	Email         string
	EmailVerified bool
	CreatedAt     time.Time
}

// AuthSession is the SSO session created by a sign-in at the provider.
type AuthSession struct {
	ID               string
	UserID           string
	AuthTime         time.Time
	AMR              []string
	LastActiveAt     time.Time
	IdleLimit        time.Duration // effective idle limit
	AbsoluteDeadline time.Time
	Deadline         time.Time // min(LastActiveAt+IdleLimit, AbsoluteDeadline)
	EndedAt          time.Time // zero while live
	EndReason        Reason
	EndedBy          string
}

// Live reports whether the session has not been ended. It says nothing about
// its deadline: validity is decided by the activity package against a clock.
func (s *AuthSession) Live() bool { return s.EndedAt.IsZero() }

// AppSession is the session of one client inside one authentication session.
// Every access and refresh token belongs to exactly one.
type AppSession struct {
	ID            string
	AuthSessionID string
	ClientID      string
	Scopes        []string
	IdleExempt    bool
	JoinedAt      time.Time
	LastActiveAt  time.Time
	Deadline      time.Time // own deadline; zero when the app ends only with its auth session
	// RefreshChains maps each refresh chain to its current generation.
	RefreshChains map[string]uint64
	EndedAt       time.Time
	EndReason     Reason
}

// Live reports whether the application session has not been ended.
func (a *AppSession) Live() bool { return a.EndedAt.IsZero() }

// NewAppSessionID returns a fresh application session id in authentication
// session sid. The format, "<sid>.<suffix>", lets every holder of an app
// session id (a token, a row) name its authentication session without a
// lookup; SplitAppSessionID is its only reader.
func NewAppSessionID(sid string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return sid + "." + base64.RawURLEncoding.EncodeToString(b[:])
}

// SplitAppSessionID returns the authentication session id of an application
// session id (the id itself when it has no suffix).
func SplitAppSessionID(id string) string {
	sid, _, _ := strings.Cut(id, ".")
	return sid
}

// LogoutNotice is one back-channel logout to deliver to one client.
type LogoutNotice struct {
	ClientID string
	URI      string
	SID      string
	Subject  string
	Reason   Reason
}

// End is one ending, applied atomically: the authentication session (when
// AuthSessionID is set), the listed application sessions, their logout
// notices and audit events are all written in one transaction or not at all.
type End struct {
	At            time.Time
	Reason        Reason
	IdleLimit     time.Duration // the effective limit when the session ended
	Initiator     string        // "system", "user", "admin", a client id
	UserID        string
	AuthSessionID string
	AppSessions   []EndedApp
	Notices       []LogoutNotice
	// Signals are the Shared Signals session-revoked events of the ended
	// applications, queued in the same transaction as the end.
	Signals []SignalNotice
	// IfDue, when set, makes a sweeper's end conditional on the store: the
	// authentication session (or, for an end of application sessions alone,
	// each of them) ends only if its stored deadline is at or before IfDue.
	// An end whose condition fails is skipped whole, so that activity
	// another replica wrote meanwhile wins over a sweep judged without it.
	IfDue time.Time
}

// Change is one row of the change feed: authentication session SID was
// ended, joined by an app, reauthenticated or given other scopes; or, with
// SID empty, access token TokenID was revoked. Replicas apply the feed in
// ID order.
type Change struct {
	ID      int64
	SID     string
	TokenID string
}

// EndedApp names an application session ended by an End.
type EndedApp struct {
	ID       string
	ClientID string
}

// ActivityUpdate is a coalesced write of in-memory activity state.
type ActivityUpdate struct {
	AuthSessionID string
	LastActiveAt  time.Time
	IdleLimit     time.Duration
	Deadline      time.Time
	Apps          []AppActivity
}

// AppActivity is the part of an ActivityUpdate for one application session.
type AppActivity struct {
	ID            string
	LastActiveAt  time.Time
	Deadline      time.Time
	RefreshChains map[string]uint64 // chains whose generation moved
}

// OutboxEntry is a pending or finished back-channel logout delivery.
type OutboxEntry struct {
	ID            int64
	JTI           string
	ClientID      string
	URI           string
	SID           string
	Subject       string
	Reason        Reason
	CreatedAt     time.Time
	NextAttemptAt time.Time
	Attempts      int
	LastError     string
	DeliveredAt   time.Time
	AbandonedAt   time.Time
	// ClaimedBy and ClaimedUntil name the worker delivering the row and when
	// its claim lapses (a worker that died mid-delivery leaves a claim that
	// expires; the row is then delivered again, with the same JTI).
	ClaimedBy    string
	ClaimedUntil time.Time
}

// DeliveryClaim asks for due outbox rows of one destination, for one worker.
// A claim takes rows that are pending, due at Now, and not claimed (or whose
// claim has lapsed), oldest due first, and marks them claimed by Worker until
// Until, atomically, so that several processes can deliver from one outbox.
type DeliveryClaim struct {
	Worker string
	Now    time.Time
	Until  time.Time
	// URI is the destination (a backchannel_logout_uri) to claim rows of.
	// Empty means every destination not listed in Except.
	URI    string
	Except []string
	Limit  int
}

// AuditEvent is one line of the audit trail.
type AuditEvent struct {
	ID        int64     `json:"id"`
	At        time.Time `json:"at"`
	Kind      string    `json:"kind"`
	UserID    string    `json:"user_id,omitempty"`
	SID       string    `json:"sid,omitempty"`
	ClientID  string    `json:"client_id,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Initiator string    `json:"initiator,omitempty"`
	Detail    string    `json:"detail,omitempty"`
}

// Audit event kinds.
const (
	AuditSessionStart       = "session_start"
	AuditAppJoin            = "app_join"
	AuditSessionEnd         = "session_end"
	AuditAppEnd             = "app_end"
	AuditLogoutDelivered    = "logout_delivered"
	AuditLogoutRetrying     = "logout_retrying"
	AuditLogoutAbandoned    = "logout_abandoned"
	AuditLoginFailed        = "login_failed"
	AuditLoginSucceeded     = "login_succeeded"
	AuditSessionReauthented = "session_reauthenticated"
)

// AuditFilter selects audit events; empty fields match everything.
type AuditFilter struct {
	UserID string
	SID    string
	Limit  int
}

// SigningKey is a stored private signing key.
type SigningKey struct {
	ID         string
	Algorithm  string
	PrivateDER []byte // PKCS#8
	CreatedAt  time.Time
	RetireAt   time.Time // zero while current
}
