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

// procOptions shape a procCluster's configuration.
type procOptions struct {
	dsn       string        // the database (default: a fresh one on the shared test server)
	idle      time.Duration // session and client idle_timeout (default 2s)
	tokenTTL  time.Duration // access_token_ttl (default 1s)
	extraSess string        // more lines of the session section
}

func newProcCluster(t *testing.T, n int, receiver string, opts ...func(*procOptions)) *procCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	o := procOptions{idle: 2 * time.Second, tokenTTL: time.Second}
	for _, f := range opts {
		f(&o)
	}
	if o.dsn == "" {
		o.dsn = pgtest.NewDatabase(t)
	}
	c := &procCluster{t: t, bin: buildBinary(t), dsn: o.dsn, target: -1}
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
  idle_timeout: %s
  max_lifetime: 1h
  sweep_interval: %s
  replicas: %d
  sync_interval: 100ms
%s
backchannel:
  initial_backoff: 100ms
  max_backoff: 200ms
  poll_interval: 200ms
clients:
  - client_id: bank
    client_secret: bank-secret-0123456789
    redirect_uris: [http://127.0.0.1:1/callback]
    backchannel_logout_uri: %s/backchannel-logout
    idle_timeout: %s
    access_token_ttl: %s
`, c.lb.URL, addr, c.dsn, o.idle, procSweep, n, o.extraSess, receiver, o.idle, o.tokenTTL), 0o600))
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
	sid, _ := c.signInForTokens()
	return sid
}

// app is the bank's relying-party configuration, through the balancer.
func (c *procCluster) app() *oauth2.Config {
	return &oauth2.Config{ClientID: "bank", ClientSecret: "bank-secret-0123456789", RedirectURL: "http://127.0.0.1:1/callback",
		Endpoint: oauth2.Endpoint{AuthURL: c.lb.URL + "/authorize", TokenURL: c.lb.URL + "/oauth/token"}, Scopes: []string{"openid", "offline_access"}}
}

// signInForTokens is signIn that also returns the app's tokens.
func (c *procCluster) signInForTokens() (string, *oauth2.Token) {
	c.t.Helper()
	before := c.count(`SELECT COUNT(*) FROM auth_sessions`)
	tok, err := oidctest.Login(c.t.Context(), oidctest.NewBrowser(c.lb.URL, nil), c.lb.URL, c.app(), "alice", "a long password")
	require.NoError(c.t, err)
	require.Equal(c.t, before+1, c.count(`SELECT COUNT(*) FROM auth_sessions`))
	var sid string
	require.NoError(c.t, c.db.QueryRow(c.t.Context(), `SELECT id FROM auth_sessions ORDER BY auth_time DESC LIMIT 1`).Scan(&sid))
	return sid, tok
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

// outageSample is one request of the load during an outage test.
type outageSample struct {
	replica  int
	kind     string // introspect or heartbeat
	start    time.Time
	took     time.Duration
	status   int
	active   bool   // introspection said active: true
	inactive bool   // introspection said active: false
	errCode  string // the OAuth error of a refusal
}

// hammer sends introspections and heartbeats for token to every replica
// directly, each kind in its own loop per replica, until stop is closed.
func (c *procCluster) hammer(token string, stop <-chan struct{}) func() []outageSample {
	var mu sync.Mutex
	var samples []outageSample
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 30 * time.Second}
	for i, addr := range c.addrs {
		for _, kind := range []string{"introspect", "heartbeat"} {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					s := c.probe(client, addr, kind, token)
					s.replica = i
					mu.Lock()
					samples = append(samples, s)
					mu.Unlock()
					time.Sleep(10 * time.Millisecond) // a steady trickle, not a flood, on two shared cores
				}
			})
		}
	}
	return func() []outageSample { wg.Wait(); return samples }
}

func (c *procCluster) probe(client *http.Client, addr, kind, token string) outageSample {
	var req *http.Request
	if kind == "introspect" {
		req, _ = http.NewRequest(http.MethodPost, "http://"+addr+"/oauth/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("bank", "bank-secret-0123456789")
	} else {
		req, _ = http.NewRequest(http.MethodPost, "http://"+addr+"/activity", nil)
		req.Header.Set("Authorization", "Bearer "+token)
	}
	s := outageSample{kind: kind, start: time.Now()}
	resp, err := client.Do(req)
	s.took = time.Since(s.start)
	if err != nil {
		s.errCode = "transport: " + err.Error()
		return s
	}
	defer resp.Body.Close()
	s.status = resp.StatusCode
	var out struct {
		Active *bool  `json:"active"`
		Error  string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	s.errCode = out.Error
	if kind == "introspect" && resp.StatusCode == http.StatusOK && out.Active != nil {
		s.active, s.inactive = *out.Active, !*out.Active
	}
	return s
}

// TestDatabaseStoppedAndStartedUnderLoad is rule 10 with real processes and
// a real outage: two replicas serve introspections and heartbeats of one
// session while their PostgreSQL server is stopped (fast shutdown: every
// connection dropped) and started again. Every answer comes within the
// database timeout, is 200 or 503 temporarily_unavailable (never a hang,
// never a 500, never active: false for the live session); past the bound
// after which a replica cannot vouch for what it has not read (4 x
// sync_interval) no replica answers active: true; a refresh refused during
// the outage changed nothing; and both replicas serve again without a
// restart.
func TestDatabaseStoppedAndStartedUnderLoad(t *testing.T) {
	const dbTimeout = 300 * time.Millisecond
	const syncEvery = 100 * time.Millisecond // sync_interval in the configuration
	srv := pgtest.NewServer(t)
	c := newProcCluster(t, 2, "http://127.0.0.1:1", func(o *procOptions) {
		o.dsn, o.idle, o.tokenTTL = srv.NewDatabase(t), time.Minute, time.Minute
		o.extraSess = fmt.Sprintf("  database_timeout: %s", dbTimeout)
	})
	_, tok := c.signInForTokens()
	stopLoad := make(chan struct{})
	collect := c.hammer(tok.AccessToken, stopLoad)
	defer func() {
		select {
		case <-stopLoad:
		default:
			close(stopLoad)
			collect()
		}
	}()
	time.Sleep(500 * time.Millisecond) // load before the outage (real time: the processes run on their own clocks)

	stoppedAt := time.Now()
	srv.Stop()
	time.Sleep(time.Second) // the outage, under load
	refresh := func() (*oauth2.Token, error) {
		return c.app().TokenSource(t.Context(), &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	}
	_, err := refresh()
	var re *oauth2.RetrieveError
	require.ErrorAs(t, err, &re, "a refresh while the database is away is refused")
	require.Equal(t, http.StatusServiceUnavailable, re.Response.StatusCode)
	require.Equal(t, "temporarily_unavailable", re.ErrorCode)
	time.Sleep(time.Second)
	startedAt := time.Now()
	require.NoError(t, srv.Start())

	var recovered time.Duration
	require.Eventually(t, func() bool {
		for _, addr := range c.addrs {
			if s := c.probe(http.DefaultClient, addr, "introspect", tok.AccessToken); !s.active {
				return false
			}
		}
		recovered = time.Since(startedAt)
		return true
	}, 20*time.Second, 20*time.Millisecond, "every replica vouches again, without a restart")
	close(stopLoad)
	samples := collect()
	for i, ch := range c.children {
		require.Nil(t, ch.cmd.ProcessState, "replica %d still runs: it was not restarted", i)
	}

	blind := stoppedAt.Add(4*syncEvery + syncEvery + procSlack) // past the bound, with the poll and scheduling on top
	var during, refused int
	for _, s := range samples {
		require.LessOrEqual(t, s.took, dbTimeout+procSlack, "%+v: answered within the database timeout", s)
		require.Contains(t, []int{http.StatusOK, http.StatusServiceUnavailable}, s.status, "%+v", s)
		require.False(t, s.inactive, "%+v: the session was never ended; a replica that cannot tell says 503, not inactive", s)
		if s.status == http.StatusServiceUnavailable {
			require.Equal(t, "temporarily_unavailable", s.errCode, "%+v", s)
			refused++
		}
		if s.start.After(blind) && s.start.Add(s.took).Before(startedAt) {
			during++
			require.False(t, s.active, "%+v: active: true from a replica that has not read the database for %s", s, s.start.Sub(stoppedAt))
		}
	}
	require.Positive(t, during, "the load ran through the outage")
	t.Logf("%d requests, %d answered 503 temporarily_unavailable, %d past the vouching bound while the database was down; both replicas vouched again %s after it started",
		len(samples), refused, during, recovered.Round(time.Millisecond))

	// Nothing was acknowledged that was not written: the refresh token of
	// before the outage is still the current one.
	_, err = refresh()
	require.NoError(t, err, "the refused refresh rotated nothing")
}
