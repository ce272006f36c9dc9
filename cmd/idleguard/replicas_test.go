package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/oidc/oidctest"
	"github.com/idleguard/idleguard/session/pgtest"
)

// The tests in this file run several idleguard processes (the real binary)
// on one PostgreSQL database, behind a load balancer in the test that sends
// each request where the test says, and kill them with SIGKILL: what issue
// 10 promises when a replica dies. Time is real here (processes must really
// die), so the intervals are short: a sweep every 200ms, a lease of 600ms.

const (
	procSweep = 200 * time.Millisecond
	procLease = 3 * procSweep // the tracker's default: 3 x sweep_interval
	// procSlack allows for process scheduling on a loaded machine (two
	// shared cores, several test binaries at once) beyond a stated bound.
	procSlack = time.Second
)

// procCluster is n idleguard processes on one PostgreSQL database, behind a
// load balancer that is their issuer.
type procCluster struct {
	t        *testing.T
	bin      string
	dsn      string
	db       *pgx.Conn
	lb       *httptest.Server
	mu       sync.Mutex
	target   int // replica the balancer sends requests to; -1: round robin
	next     int
	addrs    []string
	configs  []string
	children []*child
}

func newProcCluster(t *testing.T, n int, receiver string) *procCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	c := &procCluster{t: t, bin: buildBinary(t), dsn: pgtest.NewDatabase(t), target: -1}
	c.lb = httptest.NewServer(http.HandlerFunc(c.balance))
	t.Cleanup(c.lb.Close)
	dir := t.TempDir()
	for i := range n {
		addr := freePort(t)
		config := filepath.Join(dir, fmt.Sprintf("replica%d.yaml", i))
		require.NoError(t, os.WriteFile(config, fmt.Appendf(nil, `issuer: %s
listen: %s
database: %s
session:
  idle_timeout: 2s
  max_lifetime: 1h
  sweep_interval: %s
  replicas: %d
  sync_interval: 100ms
backchannel:
  initial_backoff: 100ms
  max_backoff: 200ms
  poll_interval: 200ms
clients:
  - client_id: bank
    client_secret: bank-secret-0123456789
    redirect_uris: [http://127.0.0.1:1/callback]
    backchannel_logout_uri: %s/backchannel-logout
    idle_timeout: 2s
    access_token_ttl: 1s
`, c.lb.URL, addr, c.dsn, procSweep, n, receiver), 0o600))
		c.addrs, c.configs = append(c.addrs, addr), append(c.configs, config)
	}
	add := exec.Command(c.bin, "user", "add", "alice", "--config", c.configs[0])
	add.Stdin = strings.NewReader("a long password\n")
	out, err := add.CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, config := range c.configs {
		c.children = append(c.children, startChild(t, c.bin, config))
	}
	c.db = pgtest.Conn(t, c.dsn)
	t.Cleanup(func() {
		if t.Failed() {
			for i, ch := range c.children {
				log, _ := os.ReadFile(ch.log)
				t.Logf("replica %d (%s) log:\n%s", i, ch.replica, log)
			}
		}
	})
	return c
}

// balance forwards a request to the target replica, or round robin: any
// request of a flow may land on any replica, as behind a balancer without
// sticky sessions.
func (c *procCluster) balance(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	i := c.target
	if i < 0 {
		i = c.next % len(c.addrs)
		c.next++
	}
	c.mu.Unlock()
	httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: c.addrs[i]}).ServeHTTP(w, r)
}

// signIn signs alice in through the balancer, each request of the flow at
// the next replica, and returns the new session's id.
func (c *procCluster) signIn() string {
	c.t.Helper()
	cfg := &oauth2.Config{ClientID: "bank", ClientSecret: "bank-secret-0123456789", RedirectURL: "http://127.0.0.1:1/callback",
		Endpoint: oauth2.Endpoint{AuthURL: c.lb.URL + "/authorize", TokenURL: c.lb.URL + "/oauth/token"}, Scopes: []string{"openid"}}
	before := c.count(`SELECT COUNT(*) FROM auth_sessions`)
	_, err := oidctest.Login(c.t.Context(), oidctest.NewBrowser(c.lb.URL, nil), c.lb.URL, cfg, "alice", "a long password")
	require.NoError(c.t, err)
	require.Equal(c.t, before+1, c.count(`SELECT COUNT(*) FROM auth_sessions`))
	var sid string
	require.NoError(c.t, c.db.QueryRow(c.t.Context(), `SELECT id FROM auth_sessions ORDER BY auth_time DESC LIMIT 1`).Scan(&sid))
	return sid
}

func (c *procCluster) count(q string, args ...any) int {
	c.t.Helper()
	var n int
	require.NoError(c.t, c.db.QueryRow(c.t.Context(), q, args...).Scan(&n), q)
	return n
}

// leaseHolder is the replica holding an unexpired sweeper lease, or "".
func (c *procCluster) leaseHolder() string {
	var holder string
	err := c.db.QueryRow(c.t.Context(), `SELECT holder FROM leases WHERE name = 'sweeper' AND expires_at > $1`,
		time.Now().UnixMilli()).Scan(&holder)
	if err != nil && err != pgx.ErrNoRows {
		c.t.Fatal(err)
	}
	return holder
}

// replica returns the process named id in leases and claims.
func (c *procCluster) replica(id string) *child {
	c.t.Helper()
	for _, ch := range c.children {
		if ch.replica == id {
			return ch
		}
	}
	c.t.Fatalf("no replica named %q", id)
	return nil
}

// receiver is an app's back-channel logout endpoint that counts the
// logout tokens it gets by jti. With hold set, it holds the first POST of
// each jti (mid-delivery) until release is closed or the sender goes away.
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	got     map[string]int
	hold    bool
	release chan struct{}
}

func newReceiver(t *testing.T, hold bool) *receiver {
	rc := &receiver{got: map[string]int{}, hold: hold, release: make(chan struct{})}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	t.Cleanup(rc.free)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	jti := jtiOf(r.PostFormValue("logout_token"))
	rc.mu.Lock()
	rc.got[jti]++
	first := rc.got[jti] == 1
	rc.mu.Unlock()
	if rc.hold && first {
		select {
		case <-rc.release:
		case <-r.Context().Done(): // the sender died
			return
		}
	}
}

func (rc *receiver) free() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	select {
	case <-rc.release:
	default:
		close(rc.release)
	}
}

func (rc *receiver) times(jti string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.got[jti]
}

func (rc *receiver) distinct() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.got)
}

// jtiOf reads the jti of a logout token (the test trusts its provider; the
// oidc package's tests verify the tokens).
func jtiOf(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "malformed"
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "malformed"
	}
	var claims struct {
		JTI string `json:"jti"`
	}
	_ = json.Unmarshal(payload, &claims)
	return claims.JTI
}

// TestKilledSweeperHolderIsReplaced: three replicas; the holder of the
// sweeper lease is killed with SIGKILL just before sessions go idle. Another
// replica takes the lease within 2 x sweep_interval + the lease time, the
// sessions end (each once, with one outbox row per end) no later than that
// bound after their deadlines, and their logouts are delivered.
func TestKilledSweeperHolderIsReplaced(t *testing.T) {
	rc := newReceiver(t, false)
	c := newProcCluster(t, 3, rc.URL)
	var sids []string
	for range 3 {
		sids = append(sids, c.signIn())
	}
	var holder string
	require.Eventually(t, func() bool { holder = c.leaseHolder(); return holder != "" }, 10*time.Second, 10*time.Millisecond)
	killedAt := time.Now()
	c.replica(holder).kill()
	endedBefore := c.count(`SELECT COUNT(*) FROM auth_sessions WHERE ended_at IS NOT NULL`)

	var takeover time.Duration
	require.Eventually(t, func() bool {
		h := c.leaseHolder()
		takeover = time.Since(killedAt)
		return h != "" && h != holder
	}, 10*time.Second, 5*time.Millisecond, "another replica takes the sweeper lease")
	bound := 2*procSweep + procLease
	t.Logf("sweeper lease taken over %s after SIGKILL (bound %s); %d of %d sessions had ended before", takeover.Round(time.Millisecond), bound, endedBefore, len(sids))
	require.LessOrEqual(t, takeover, bound+procSlack)

	require.Eventually(t, func() bool {
		return c.count(`SELECT COUNT(*) FROM auth_sessions WHERE ended_at IS NULL`) == 0
	}, 10*time.Second, 20*time.Millisecond, "the new sweeper ends every idle session")
	late := time.Duration(c.count(`SELECT MAX(ended_at - LEAST(last_active_at + idle_limit_ms, absolute_deadline))::int FROM auth_sessions`)) * time.Millisecond
	t.Logf("latest end %s after its deadline", late)
	require.LessOrEqual(t, late, bound+procSlack)
	require.Equal(t, len(sids), c.count(`SELECT COUNT(*) FROM auth_sessions WHERE end_reason = 'idle_timeout'`))

	// No session ended twice, no logout queued twice.
	require.Equal(t, len(sids), c.count(`SELECT COUNT(*) FROM audit_events WHERE kind = 'session_end'`))
	require.Equal(t, len(sids), c.count(`SELECT COUNT(DISTINCT sid) FROM audit_events WHERE kind = 'session_end'`))
	require.Equal(t, len(sids), c.count(`SELECT COUNT(*) FROM logout_outbox`))
	require.Equal(t, len(sids), c.count(`SELECT COUNT(DISTINCT sid) FROM logout_outbox`))
	require.Eventually(t, func() bool {
		return c.count(`SELECT COUNT(*) FROM logout_outbox WHERE delivered_at IS NOT NULL`) == len(sids)
	}, 10*time.Second, 20*time.Millisecond, "every logout is delivered")
	require.Equal(t, len(sids), rc.distinct())
}

// TestKilledReplicaLogoutsAreDeliveredByAnother: two replicas; sessions go
// idle, their logouts are claimed and in flight (the app holds the POSTs),
// and the replica delivering them is killed with SIGKILL. Once its claims
// lapse, the other replica delivers every one of its logout tokens, with the
// same jti: the app gets it twice, which is allowed, and the audit counts it
// (lapsed_claim=true on the delivery after the lapsed claim).
func TestKilledReplicaLogoutsAreDeliveredByAnother(t *testing.T) {
	rc := newReceiver(t, true)
	c := newProcCluster(t, 2, rc.URL)
	const people = 3
	for range people {
		c.signIn()
	}
	require.Eventually(t, func() bool { return rc.distinct() == people }, 15*time.Second, 20*time.Millisecond,
		"every logout is in flight, held by the app")

	type claimed struct{ jti, by string }
	var rows []claimed
	dbRows, err := c.db.Query(t.Context(), `SELECT jti, COALESCE(claimed_by, '') FROM logout_outbox WHERE delivered_at IS NULL ORDER BY id`)
	require.NoError(t, err)
	for dbRows.Next() {
		var r claimed
		require.NoError(t, dbRows.Scan(&r.jti, &r.by))
		rows = append(rows, r)
	}
	require.NoError(t, dbRows.Err())
	require.Len(t, rows, people, "nothing is delivered while the app holds the POSTs")
	victim := rows[0].by
	require.NotEmpty(t, victim, "the row in flight is claimed")
	c.replica(victim).kill()
	var lost []string
	for _, r := range rows {
		if r.by == victim {
			lost = append(lost, r.jti)
		}
	}

	// A claim lapses 2 x backchannel.timeout + 30 s after it was taken (40 s
	// here); the test moves the dead replica's claims into the past instead
	// of waiting, as the clock would.
	_, err = c.db.Exec(t.Context(), `UPDATE logout_outbox SET claimed_until = claimed_until - 3600000 WHERE claimed_by = $1`, victim)
	require.NoError(t, err)
	rc.free()
	require.Eventually(t, func() bool {
		return c.count(`SELECT COUNT(*) FROM logout_outbox WHERE delivered_at IS NOT NULL`) == people
	}, 15*time.Second, 20*time.Millisecond, "the surviving replica delivers every logout")

	for _, jti := range lost {
		require.GreaterOrEqual(t, rc.times(jti), 2, "the dead replica's logout %s is delivered again, with the same jti", jti)
		require.Equal(t, 1, c.count(`SELECT COUNT(*) FROM audit_events WHERE kind = 'logout_delivered'
			AND detail LIKE '%jti=' || $1 || ' %' AND detail LIKE '%lapsed_claim=true%'`, jti), "the possible duplicate is counted in the audit")
	}
	require.Equal(t, people, c.count(`SELECT COUNT(*) FROM audit_events WHERE kind = 'logout_delivered'`), "one delivery recorded per logout")
	require.Equal(t, people, c.count(`SELECT COUNT(*) FROM logout_outbox`), "no logout queued twice")
	t.Logf("replica %s killed with %d logouts in flight; all %d delivered by the other", victim, len(lost), people)
}
