package oidc

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
)

// The tests in this file pin the rules of issue 10 that live in the
// activity tracker, with several replicas: each a Provider with its own
// tracker and its own store handle on one database, behind its own HTTP
// server, and a load balancer in front that sends each request to the
// replica the test names. All replicas share one controllable clock.

// replicaStore is what the tests need of a replica's store handle: what the
// provider uses, and a way to add people.
type replicaStore interface {
	Store
	CreateUser(ctx context.Context, u *session.User) error
}

// backend is a database the replicas share: fresh makes an empty one and
// returns its name, open opens one replica's handle on it. Every replica
// test runs on each of backends.
type backend struct {
	name  string
	fresh func(t *testing.T) string
	open  func(t *testing.T, db string) replicaStore
}

var backends = []backend{
	{"sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "idleguard.db") },
		func(t *testing.T, path string) replicaStore {
			s, err := session.OpenSQLite(t.Context(), path)
			require.NoError(t, err)
			t.Cleanup(func() { s.Close() })
			return s
		}},
	// Each replica its own pool (and listener) on one PostgreSQL database.
	{"postgres", func(t *testing.T) string { return pgtest.NewDatabase(t) }, func(t *testing.T, dsn string) replicaStore {
		s, err := session.OpenPostgres(t.Context(), dsn)
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	}},
}

// onEveryBackend runs fn once per backend, as a subtest named after it.
func onEveryBackend(t *testing.T, fn func(t *testing.T, db backend)) {
	for _, db := range backends {
		t.Run(db.name, func(t *testing.T) { fn(t, db) })
	}
}

// replicaHeader names, on a request to the balancer, the replica that must
// serve it; without it the balancer sends the request to cluster.target.
const replicaHeader = "X-Test-Replica"

type replica struct {
	store replicaStore
	p     *Provider
	srv   *httptest.Server
}

// cluster is n replicas behind a test load balancer. Its env serves as the
// person's and the apps' view of the provider (issuer = the balancer); its
// p is replica 0's, and db is replica 0's store handle.
type cluster struct {
	*env
	db       replicaStore
	replicas []*replica
	mu       sync.Mutex
	target   int
	rotate   bool  // each request that names no replica goes to the next one
	served   []int // requests forwarded to each replica
}

func newCluster(t *testing.T, db backend, n int, opts ...envOption) *cluster {
	t.Helper()
	c := &cluster{env: &env{t: t, clock: newClock(), dbPath: db.fresh(t)}}
	c.srv = httptest.NewServer(http.HandlerFunc(c.balance))
	t.Cleanup(c.srv.Close)
	c.issuer = c.srv.URL
	for i := range n {
		cfg := Config{
			Issuer: c.issuer, Clients: testClients(), Now: c.clock.Now,
			Session: sessionDefaults(n),
			Logger:  slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})).With("replica", i),
			Login:   LoginConfig{MaxFailures: 3},
		}
		for _, o := range opts {
			o(&cfg)
		}
		r := &replica{store: db.open(t, c.dbPath)}
		var err error
		r.p, err = New(t.Context(), cfg, r.store)
		require.NoError(t, err)
		r.srv = httptest.NewServer(r.p)
		t.Cleanup(r.srv.Close)
		c.replicas = append(c.replicas, r)
		if i == 0 {
			c.cfg = cfg
		}
	}
	c.served = make([]int, n)
	c.db, c.p = c.replicas[0].store, c.replicas[0].p
	c.store, _ = c.db.(*session.SQLite)
	c.users = c.db
	c.addUser("alice")
	return c
}

// balance forwards a request to the replica named by replicaHeader, or the
// current target, as a load balancer without sticky sessions would.
func (c *cluster) balance(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	if c.rotate {
		c.target = (c.target + 1) % len(c.replicas)
	}
	i := c.target
	if h := r.Header.Get(replicaHeader); h != "" {
		i, _ = strconv.Atoi(h)
	}
	c.served[i]++
	c.mu.Unlock()
	u, _ := url.Parse(c.replicas[i].srv.URL)
	httputil.NewSingleHostReverseProxy(u).ServeHTTP(w, r)
}

// via sends every following request that names no replica to replica i.
func (c *cluster) via(i int) *cluster {
	c.mu.Lock()
	c.target, c.rotate = i, false
	c.mu.Unlock()
	return c
}

// pinned is an HTTP client whose requests go to replica i whatever the
// current target, for requests that run at the same time.
func (c *cluster) pinned(i int) *http.Client {
	return &http.Client{Transport: pinTransport{i}}
}

type pinTransport struct{ i int }

func (p pinTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(replicaHeader, strconv.Itoa(p.i))
	return http.DefaultTransport.RoundTrip(r)
}

// tick runs one round of every replica's background work, as their loops
// would by the (frozen) clock: flush, apply the change feed, sweep. It
// returns how many sessions the sweeps ended.
func (c *cluster) tick() int {
	c.t.Helper()
	ctx := c.t.Context()
	for _, r := range c.replicas {
		require.NoError(c.t, r.p.tracker.Flush(ctx, false))
	}
	c.sync()
	ended := 0
	for _, r := range c.replicas {
		n, err := r.p.tracker.Sweep(ctx)
		require.NoError(c.t, err)
		ended += n
	}
	return ended
}

// sync makes every replica apply the change feed.
func (c *cluster) sync() {
	c.t.Helper()
	for _, r := range c.replicas {
		_, err := r.p.tracker.Sync(c.t.Context())
		require.NoError(c.t, err)
	}
}

// runAll starts every replica's background loops (change feed, sweeper,
// deliveries), stopped when t ends: for the tests that measure real time.
func (c *cluster) runAll(t *testing.T) {
	for _, r := range c.replicas {
		r.p.Run(t.Context())
		t.Cleanup(func() { _ = r.p.Close(context.Background()) })
	}
}

func (c *cluster) sweepAt(i int) int {
	c.t.Helper()
	n, err := c.replicas[i].p.tracker.Sweep(c.t.Context())
	require.NoError(c.t, err)
	return n
}

// activeAt reads GET /session at replica i, which is never activity.
func (c *cluster) activeAt(i int, token string) bool {
	c.t.Helper()
	c.via(i)
	return c.status(token)["active"] == true
}

// introspectAt introspects at replica i: activity, and no re-read of a
// session that memory shows alive, so only the change feed tells it of an
// end elsewhere.
func (c *cluster) introspectAt(i int, token string) bool {
	c.t.Helper()
	c.via(i)
	return c.introspect(token)["active"] == true
}

// refreshAt renews tk at replica i (refresh is not activity for these
// apps), keeping the new tokens when it succeeds.
func (c *cluster) refreshAt(i int, tk *tokens) error {
	c.t.Helper()
	c.via(i)
	next, err := tk.rp.refresh(c.t, tk.RefreshToken)
	if err == nil {
		tk.Token = next
	}
	return err
}

// withBackchannel gives a client a back-channel logout URI (nobody listens:
// the tests count the outbox rows).
func withBackchannel(clientID string) envOption {
	return func(cfg *Config) {
		for _, cl := range cfg.Clients {
			if cl.ID == clientID {
				cl.BackchannelLogoutURI = "http://127.0.0.1:1/" + clientID + "/backchannel"
				cl.Policy.BackchannelLogoutURI = cl.BackchannelLogoutURI
			}
		}
	}
}

func sessionDefaults(replicas int) activity.Config {
	return activity.Config{IdleTimeout: time.Hour, MaxLifetime: 12 * time.Hour, SweepInterval: time.Second,
		FlushInterval: time.Second, Replicas: replicas}
}

// endedEvents counts the session_end events of sid.
func (c *cluster) endedEvents(sid string) int {
	c.t.Helper()
	events, err := c.db.Audit(c.t.Context(), sessionFilter(sid))
	require.NoError(c.t, err)
	n := 0
	for _, ev := range events {
		if ev.Kind == session.AuditSessionEnd {
			n++
		}
	}
	return n
}

// Rule 1: a person active only through replica B is never signed out by
// replica A's enforcement or sweeper, whichever replica holds the lease and
// however the activity falls relative to the stored deadline.
func TestReplicasActivityAnywhereCountsEverywhere(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		for _, n := range []int{2, 3} {
			t.Run(strconv.Itoa(n)+" replicas", func(t *testing.T) {
				c := newCluster(t, db, n)
				b := c.via(0).browser()
				bank := b.login(c.rp("bank"), "alice") // 5m limit; slack 30s
				require.True(t, c.activeAt(0, bank.AccessToken), "replica A holds the session in memory")
				require.Zero(t, c.tick(), "replica A takes the sweeper lease")
				last := c.clock.Now()
				// Activity only at the other replicas, at every distance from the
				// stored deadline: well inside the slack (never flushed for it),
				// beyond it, and in the last seconds before the stored deadline.
				for _, step := range []time.Duration{10 * time.Second, 4*time.Minute + 50*time.Second, 20 * time.Second,
					4*time.Minute + 59*time.Second, time.Second, 4*time.Minute + 58*time.Second} {
					c.clock.Advance(step)
					c.via(n - 1)
					require.Equal(t, http.StatusOK, c.heartbeat(bank.fresh(c.env)), "activity at replica %d", n-1)
					last = c.clock.Now()
					require.Zero(t, c.tick())
					require.True(t, c.activeAt(0, bank.AccessToken), "replica A counts activity at replica B")
				}
				// Then idle: the session lives until last activity + 5m, by every
				// replica's enforcement and sweeper, to the second.
				for c.clock.Now().Add(10 * time.Second).Before(last.Add(5 * time.Minute)) {
					c.clock.Advance(10 * time.Second)
					require.Zero(t, c.tick(), "no early end at %s", c.clock.Now().Sub(last))
				}
				for c.clock.Now().Before(last.Add(5*time.Minute - time.Second)) {
					c.clock.Advance(time.Second)
					require.Zero(t, c.tick())
				}
				c.via(0)
				tok := bank.fresh(c.env) // refresh does not count for the bank app
				for i := range n {
					require.True(t, c.activeAt(i, tok), "replica %d, one second before the deadline", i)
				}
				c.clock.Advance(time.Second)
				for i := range n {
					require.False(t, c.activeAt(i, tok), "replica %d, at the deadline", i)
				}
				require.Equal(t, 2, c.tick(), "the session and its app end once")
				require.Equal(t, 1, c.endedEvents(bank.sid))
			})
		}
	})
}

// Rule 1, GET /session: another replica's remaining seconds follow the
// activity written there (they may lag by the flush slack, never run ahead).
func TestReplicasSessionStatusFollowsActivityElsewhere(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 2)
		bank := c.via(0).browser().login(c.rp("bank"), "alice")
		c.sync() // the join is old news
		require.EqualValues(t, 300, c.via(1).status(bank.AccessToken)["idle_remaining"])
		c.clock.Advance(4 * time.Minute)
		require.Equal(t, http.StatusOK, c.via(0).heartbeat(bank.AccessToken))
		c.tick()
		remaining := c.via(1).status(bank.AccessToken)["idle_remaining"].(float64)
		require.InDelta(t, 300, remaining, 30, "replica B sees the activity at A within the slack")
		require.LessOrEqual(t, remaining, 300.0, "never more than the truth")
	})
}

// Rule 2: a join at B that tightens the limit (the banking app), and an end
// at B, reach A's memory through the change feed: A never lets a credential
// through after the deadline that follows from what happened anywhere.
func TestReplicasNeverLater(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		t.Run("join elsewhere tightens the limit", func(t *testing.T) {
			c := newCluster(t, db, 3)
			b := c.via(0).browser()
			mail := b.login(c.rp("mail"), "alice") // 30m
			for i := range 3 {
				require.True(t, c.activeAt(i, mail.AccessToken))
			}
			c.via(1)
			b.login(c.rp("bank"), "alice") // 5m, joined at replica 1
			c.sync()
			c.clock.Advance(5*time.Minute - time.Second)
			require.NoError(t, c.refreshAt(2, mail))
			c.clock.Advance(time.Second)
			for i := range 3 {
				requireOAuthError(t, c.refreshAt(i, mail), "invalid_grant")
				require.False(t, c.activeAt(i, mail.AccessToken), "replica %d follows the banking app's 5m", i)
			}
		})
		t.Run("end elsewhere", func(t *testing.T) {
			c := newCluster(t, db, 2)
			b := c.via(0).browser()
			mail := b.login(c.rp("mail"), "alice")
			bank := b.login(c.rp("bank"), "alice")
			require.True(t, c.activeAt(0, bank.AccessToken))
			require.True(t, c.activeAt(0, mail.AccessToken))
			// The bank app revokes its refresh token at B: its app session ends.
			c.via(1)
			revoke(t, c.env, "bank", bank.RefreshToken, "refresh_token")
			c.sync()
			require.False(t, c.introspectAt(0, bank.AccessToken), "A refuses the app ended at B")
			require.True(t, c.introspectAt(0, mail.AccessToken), "and only that app")
			// An administrator ends the whole session at B.
			require.NoError(t, c.replicas[1].p.tracker.End(t.Context(), mail.sid, session.ReasonAdmin, "admin"))
			c.sync()
			require.False(t, c.introspectAt(0, mail.AccessToken))
			c.via(0)
			_, err := c.rp("mail").refresh(t, mail.RefreshToken)
			requireOAuthError(t, err, "invalid_grant")
			resp, _, _ := b.authorize(c.rp("mail"))
			require.Equal(t, http.StatusOK, resp.StatusCode, "A shows the login page")
			resp.Body.Close()
		})
		t.Run("reauthentication elsewhere", func(t *testing.T) {
			c := newCluster(t, db, 2)
			b := c.via(0).browser()
			mail := b.login(c.rp("mail"), "alice")
			require.True(t, c.activeAt(1, mail.AccessToken))
			first := c.introspect(mail.AccessToken)["auth_time"]
			c.clock.Advance(time.Minute)
			c.via(0)
			resp, verifier, state := b.authorize(c.rp("mail"), oauth2.SetAuthURLParam("prompt", "login"))
			again := b.exchange(c.rp("mail"), b.code(b.submitLogin(body(t, resp), "alice", testPassword), state), verifier)
			c.sync()
			c.via(1)
			require.NotEqual(t, first, c.introspect(again.AccessToken)["auth_time"], "B knows the new auth_time")
		})
	})
}

// Rule 2/3 of issue 10 in real time: with the background loops running,
// an end at one replica is refused at the other within a second (the
// change feed is polled every sync interval, 250ms by default).
func TestReplicasEndReachesEveryReplicaWithinASecond(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 2)
		mail := c.via(0).browser().login(c.rp("mail"), "alice")
		require.True(t, c.activeAt(1, mail.AccessToken))
		c.runAll(t)
		start := time.Now()
		require.NoError(t, c.replicas[0].p.tracker.End(t.Context(), mail.sid, session.ReasonAdmin, "admin"))
		require.Eventually(t, func() bool { return !c.introspectAt(1, mail.AccessToken) }, time.Second, 10*time.Millisecond)
		t.Logf("end at A refused at B after %s", time.Since(start))
	})
}

// Rule 3: refresh rotation across replicas.
func TestReplicasRefreshRotation(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		t.Run("rotated at A, replayed at B is reuse", func(t *testing.T) {
			c := newCluster(t, db, 2)
			mail := c.via(0).browser().login(c.rp("mail"), "alice")
			require.True(t, c.activeAt(1, mail.AccessToken), "B holds the session, with generation 1 in memory")
			c.via(0)
			next, err := c.rp("mail").refresh(t, mail.RefreshToken)
			require.NoError(t, err)
			c.via(1)
			_, err = c.rp("mail").refresh(t, mail.RefreshToken)
			requireOAuthError(t, err, "invalid_grant")
			c.sync()
			require.False(t, c.activeAt(0, next.AccessToken), "the app session ended at once everywhere")
			events, err := c.db.Audit(t.Context(), sessionFilter(mail.sid))
			require.NoError(t, err)
			require.True(t, hasEvent(events, session.AuditAppEnd, string(session.ReasonRefreshReuse)))
		})
		t.Run("the same token at A and B at once", func(t *testing.T) {
			c := newCluster(t, db, 2)
			mail := c.via(0).browser().login(c.rp("mail"), "alice")
			for round := range 10 {
				for i := range 2 {
					require.True(t, c.activeAt(i, mail.AccessToken), "round %d", round)
				}
				var wg sync.WaitGroup
				results := make([]*oauth2.Token, 2)
				errs := make([]error, 2)
				for i := range 2 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						ctx := context.WithValue(t.Context(), oauth2.HTTPClient, c.pinned(i))
						results[i], errs[i] = mail.rp.oauth.TokenSource(ctx, &oauth2.Token{RefreshToken: mail.RefreshToken, Expiry: time.Unix(1, 0)}).Token()
					}()
				}
				wg.Wait()
				won := 0
				for i := range 2 {
					if errs[i] == nil {
						won++
						mail.Token = results[i]
					} else {
						requireOAuthError(t, errs[i], "invalid_grant")
					}
				}
				require.Equal(t, 1, won, "round %d: exactly one rotation succeeds", round)
				c.sync()
				if !c.activeAt(0, mail.AccessToken) {
					return // the loser arrived after the winner's write: reuse, which ends the app session; also correct
				}
			}
		})
	})
}

// Rule 4: one sweeper at a time, by a lease; another takes over when its
// holder dies; no session ends twice and no logout is queued twice.
func TestReplicasOneSweeperAtATime(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		const lease = 2 * time.Minute
		c := newCluster(t, db, 3, withBackchannel("mail"), func(cfg *Config) { cfg.Session.IdleTimeout, cfg.Session.LeaseTime = time.Minute, lease })
		b := c.via(0).browser()
		first := b.login(c.rp("mail"), "alice")
		for i := range 3 {
			require.True(t, c.activeAt(i, first.AccessToken), "every replica holds the session")
		}
		require.Zero(t, c.sweepAt(0), "A takes the lease")
		c.clock.Advance(time.Minute)
		require.Zero(t, c.sweepAt(1), "B does not hold the lease")
		require.Zero(t, c.sweepAt(2))
		require.Equal(t, 2, c.sweepAt(0), "A ends the session and its app")

		// A dies (it sweeps no more and never releases its lease).
		second := c.via(1).browser().login(c.rp("mail"), "alice")
		c.clock.Advance(time.Minute)
		require.Zero(t, c.sweepAt(1), "A's lease still runs")
		c.clock.Advance(lease)
		require.Equal(t, 2, c.sweepAt(1), "B took over within the lease time after A's last sweep")
		require.Zero(t, c.sweepAt(2), "C does not sweep while B holds the lease")

		// Everyone sweeps at once: each session ended once, each logout queued once.
		third := c.via(2).browser().login(c.rp("mail"), "alice")
		c.clock.Advance(lease + time.Minute) // no lease holds now
		var wg sync.WaitGroup
		for i := range 3 {
			wg.Add(1)
			go func() { defer wg.Done(); _, _ = c.replicas[i].p.tracker.Sweep(t.Context()) }()
		}
		wg.Wait()
		for _, sid := range []string{first.sid, second.sid, third.sid} {
			require.Equal(t, 1, c.endedEvents(sid), sid)
			rows, err := c.db.Deliveries(t.Context(), sid)
			require.NoError(t, err)
			require.Len(t, rows, 1, "one outbox row for mail's end")
		}
	})
}

// One flow across replicas (no sticky sessions): an app joined at B while A
// holds the session is found at A for the code exchange, and an end at A
// takes it too, with its back-channel logout.
func TestReplicasOneFlowAcrossReplicas(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 2, withBackchannel("bank"))
		b := c.via(0).browser()
		mail := b.login(c.rp("mail"), "alice")
		require.True(t, c.introspectAt(0, mail.AccessToken), "A holds the session")
		c.via(1)
		resp, verifier, state := b.authorize(c.rp("bank")) // SSO: the bank app joins at B
		code := b.code(resp, state)
		c.via(0)
		bank := b.exchange(c.rp("bank"), code, verifier) // the code exchange lands on A
		require.True(t, c.introspectAt(0, bank.AccessToken))

		// Another person's bank app joins and exchanges at B alone; A, which
		// knows only their mail app, ends the session: the bank app is told.
		c.addUser("bob")
		b2 := c.via(0).browser()
		mail2 := b2.login(c.rp("mail"), "bob")
		require.True(t, c.introspectAt(0, mail2.AccessToken))
		c.via(1)
		bank2 := b2.login(c.rp("bank"), "bob")
		require.NoError(t, c.replicas[0].p.tracker.End(t.Context(), mail2.sid, session.ReasonAdmin, "admin"))
		c.sync()
		require.False(t, c.introspectAt(1, bank2.AccessToken))
		rows, err := c.db.Deliveries(t.Context(), mail2.sid)
		require.NoError(t, err)
		require.Len(t, rows, 1, "the bank app, joined at B, is told of the end at A")
	})
}

// The crash bound across replicas: a replica that dies loses only the
// activity it had not written, within the flush slack, and the session then
// ends earlier than that activity would have kept it, never later.
func TestReplicasCrashLosesOnlyUnwrittenActivityAndOnlyEarlier(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 2)
		bank := c.via(0).browser().login(c.rp("bank"), "alice") // 5m; slack 30s
		start := c.clock.Now()
		require.Zero(t, c.tick(), "A takes the lease")
		c.clock.Advance(20 * time.Second)
		require.Equal(t, http.StatusOK, c.via(1).heartbeat(bank.AccessToken), "activity at B, inside the slack: not written")
		c.replicas = c.replicas[:1] // B dies: no flush, no close
		for c.clock.Now().Add(10 * time.Second).Before(start.Add(5 * time.Minute)) {
			c.clock.Advance(10 * time.Second)
			require.Zero(t, c.tick(), "nothing ends before the written activity's deadline")
		}
		c.clock.Advance(start.Add(5 * time.Minute).Sub(c.clock.Now()))
		require.False(t, c.activeAt(0, bank.AccessToken), "the lost 20s end the session earlier, by less than slack + flush interval")
		require.Equal(t, 2, c.tick())
	})
}

// The figure behind rule 2/3: how long after an end at A replica B refuses
// the session's token, over many ends with the background loops running.
// On PostgreSQL B is woken by LISTEN/NOTIFY (target: p99 under 100ms); on
// SQLite it polls the feed every sync interval. Logged; asserted only
// against the one-second rule.
func TestReplicasEndLatency(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		n := 100
		if db.name == "sqlite" {
			n = 10 // polled: each end waits up to a sync interval (250ms)
		}
		c := newCluster(t, db, 2)
		sessions := make([]*tokens, n)
		for i := range sessions {
			sessions[i] = c.via(0).browser().login(c.rp("mail"), "alice")
			require.True(t, c.activeAt(1, sessions[i].AccessToken), "B holds the session in memory")
		}
		c.runAll(t)
		took := make([]time.Duration, n)
		for i, tk := range sessions {
			start := time.Now()
			require.NoError(t, c.replicas[0].p.tracker.End(t.Context(), tk.sid, session.ReasonAdmin, "admin"))
			for c.introspectAt(1, tk.AccessToken) {
				require.Less(t, time.Since(start), time.Second, "refused at B within a second")
			}
			took[i] = time.Since(start)
		}
		slices.Sort(took)
		t.Logf("%s: an end at A is refused at B after p50 %s, p99 %s, max %s (%d ends)",
			db.name, took[n/2], took[(n*99+99)/100-1], took[n-1], n)
	})
}

// API traffic across replicas: gateway checks and batched activity that
// land only on replica B keep a session alive at replica A's sweeper, and an
// end at replica A is refused by B's gateway check and batch once the change
// feed has reached B.
func TestReplicasAPITraffic(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 2, withResourceServer("api", "bank"), withAdmin)
		bank := c.via(0).browser().login(c.rp("bank"), "alice") // 5m limit
		require.Zero(t, c.tick(), "replica A takes the sweeper lease")
		for range 3 { // 24 minutes, traffic at replica B only
			c.clock.Advance(4 * time.Minute)
			c.via(1)
			requireForward(t, c.forwardAuth(http.MethodGet, "aud=bank", bank.fresh(c.env)), http.StatusOK, "")
			require.Zero(t, c.tick())
			c.clock.Advance(4 * time.Minute)
			c.via(1)
			_, res := c.batch("api", events(jtiEvent(t, bank, nil)))
			require.Equal(t, []batchResult{{Live: true}}, res)
			require.Zero(t, c.tick())
		}
		code, _ := c.via(0).adminCall(http.MethodPost, "/admin/sessions/"+bank.sid+"/end", adminToken)
		require.Equal(t, http.StatusOK, code)
		c.sync()
		c.via(1)
		requireForward(t, c.forwardAuth(http.MethodGet, "aud=bank", bank.AccessToken), http.StatusUnauthorized, "admin")
		_, res := c.batch("api", events(jtiEvent(t, bank, nil)))
		require.Equal(t, []batchResult{{Reason: "admin"}}, res)
	})
}
