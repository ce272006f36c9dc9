package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
)

// loopbackOnly refuses any request that is not for the provider under test
// (its issuer or one of its replicas), so that a misdirected redirect can
// never send load elsewhere.
type loopbackOnly struct {
	hosts []string
	next  http.RoundTripper
}

func (l loopbackOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if !slices.Contains(l.hosts, r.URL.Host) {
		return nil, fmt.Errorf("refusing request to %s: the load goes to %s only", r.URL.Host, strings.Join(l.hosts, ", "))
	}
	return l.next.RoundTrip(r)
}

// loadClient sends the requests. All clients share one transport with
// MaxIdleConnsPerHost = concurrency, so that connections are reused.
type loadClient struct {
	p        *provider
	tr       *http.Transport
	rt       http.RoundTripper
	plain    *http.Client
	app, sso *oauth2.Config
	appBasic string
	apiBasic string
	verifier string // PKCE verifier of the SSO requests (never exchanged)
	ssoURL   string
	timeout  time.Duration
}

// loadSession is one signed-in person: a browser holding the SSO cookie,
// the load app's current tokens.
type loadSession struct {
	browser *http.Client
	access  atomic.Pointer[string]
	mu      sync.Mutex // held while the refresh token rotates
	refresh string
}

func newLoadClient(p *provider, concurrency int) *loadClient {
	conns := max(concurrency, signInWorkers()) * len(p.replicas)
	tr := &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns,
		IdleConnTimeout: time.Minute, ResponseHeaderTimeout: 30 * time.Second,
	}
	hosts := []string{p.host}
	for _, r := range p.replicas {
		hosts = append(hosts, r.host)
	}
	c := &loadClient{p: p, tr: tr, rt: loopbackOnly{hosts: hosts, next: tr}, timeout: 30 * time.Second}
	c.plain = &http.Client{Transport: c.rt, Timeout: c.timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	oauth := func(id string) *oauth2.Config {
		return &oauth2.Config{ClientID: id, ClientSecret: p.secrets[id], RedirectURL: redirectURI(id),
			Endpoint: oauth2.Endpoint{AuthURL: p.issuer + "/authorize", TokenURL: p.issuer + "/oauth/token", AuthStyle: oauth2.AuthStyleInHeader},
			Scopes:   []string{"openid", "profile", "email", "offline_access"}}
	}
	c.app, c.sso = oauth("load-app"), oauth("load-sso")
	basic := func(id string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(p.secrets[id])))
	}
	c.appBasic, c.apiBasic = basic("load-app"), basic("load-api")
	c.verifier = oauth2.GenerateVerifier()
	c.ssoURL = c.sso.AuthCodeURL("sso", oauth2.S256ChallengeOption(c.verifier))
	return c
}

// signInWorkers is how many people are signed in at once before the run:
// two per core.
func signInWorkers() int { return 2 * runtime.NumCPU() }

// newBrowser follows redirects within the provider and stops at the first
// one that leaves it (the relying party's redirect URI, never requested).
func (c *loadClient) newBrowser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Transport: c.rt, Timeout: c.timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Host != c.p.host || len(via) > 10 {
				return http.ErrUseLastResponse
			}
			return nil
		}}
}

var hiddenInput = regexp.MustCompile(`name="(authRequestID|csrf)" value="([^"]*)"`)

// codeFrom reads the authorization code from the redirect to the relying party.
func codeFrom(resp *http.Response) (string, error) {
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return "", fmt.Errorf("status %d, want a redirect to the relying party", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return "", err
	}
	if e := loc.Query().Get("error"); e != "" {
		return "", fmt.Errorf("authorization error %s: %s", e, loc.Query().Get("error_description"))
	}
	code := loc.Query().Get("code")
	if code == "" {
		return "", fmt.Errorf("no code in redirect %s", loc.Redacted())
	}
	return code, nil
}

// signIn signs user in to the load app as a person would: /authorize shows
// the login form, the form is posted, the browser follows the redirects to
// the code, and the app exchanges it (PKCE) with x/oauth2.
func (c *loadClient) signIn(ctx context.Context, user string) (*loadSession, error) {
	s := &loadSession{browser: c.newBrowser()}
	verifier := oauth2.GenerateVerifier()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.app.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier)), nil)
	resp, err := s.browser.Do(req)
	if err != nil {
		return nil, err
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fields := map[string]string{}
	for _, m := range hiddenInput.FindAllStringSubmatch(string(page), -1) {
		fields[m[1]] = m[2]
	}
	if resp.StatusCode != http.StatusOK || fields["authRequestID"] == "" {
		return nil, fmt.Errorf("authorize: status %d, no login form", resp.StatusCode)
	}
	form := url.Values{"authRequestID": {fields["authRequestID"]}, "csrf": {fields["csrf"]}, "username": {user}, "password": {loadPassword}}
	req, _ = http.NewRequestWithContext(ctx, http.MethodPost, c.p.issuer+"/login", bytes.NewReader([]byte(form.Encode())))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err = s.browser.Do(req); err != nil {
		return nil, err
	}
	code, err := codeFrom(resp)
	if err != nil {
		return nil, fmt.Errorf("login %s: %w", user, err)
	}
	tok, err := c.app.Exchange(context.WithValue(ctx, oauth2.HTTPClient, c.plain), code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, fmt.Errorf("code exchange: %w", err)
	}
	if tok.RefreshToken == "" {
		return nil, fmt.Errorf("code exchange: no refresh token")
	}
	s.access.Store(&tok.AccessToken)
	s.refresh = tok.RefreshToken
	return s, nil
}

// signInAll signs in n people with workers in parallel, with progress.
func (c *loadClient) signInAll(ctx context.Context, n, workers int, progress io.Writer) ([]*loadSession, error) {
	out := make([]*loadSession, n)
	next := atomic.Int64{}
	done := atomic.Int64{}
	var firstErr atomic.Pointer[error]
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				s, err := c.signIn(ctx, userName(i))
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					cancel()
					return
				}
				out[i] = s
				done.Add(1)
			}
		})
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				d := done.Load()
				fmt.Fprintf(progress, "signing in: %d/%d (%.0f/s)\n", d, n, float64(d)/time.Since(start).Seconds())
			}
		}
	}()
	wg.Wait()
	close(stop)
	if err := firstErr.Load(); err != nil {
		return nil, fmt.Errorf("signing in: %w", *err)
	}
	if err := ctx.Err(); err != nil && done.Load() < int64(n) {
		return nil, fmt.Errorf("signing in: %w", err)
	}
	return out, nil
}

func (c *loadClient) do(req *http.Request) (int, []byte, error) {
	resp, err := c.plain.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

var activeTrue = []byte(`"active":true`)

func (c *loadClient) introspect(ctx context.Context, base string, s *loadSession) error {
	body := "token=" + url.QueryEscape(*s.access.Load())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/oauth/introspect", bytes.NewReader([]byte(body)))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", c.apiBasic)
	code, data, err := c.do(req)
	if err != nil {
		return err
	}
	if code != http.StatusOK || !bytes.Contains(data, activeTrue) {
		return fmt.Errorf("introspect: %d %.120s", code, data)
	}
	return nil
}

func (c *loadClient) bearer(ctx context.Context, method, url string, s *loadSession, want []byte) error {
	req, _ := http.NewRequestWithContext(ctx, method, url, nil)
	req.Header.Set("Authorization", "Bearer "+*s.access.Load())
	code, data, err := c.do(req)
	if err != nil {
		return err
	}
	if code != http.StatusOK || (want != nil && !bytes.Contains(data, want)) {
		return fmt.Errorf("%s %s: %d %.120s", method, url, code, data)
	}
	return nil
}

func (c *loadClient) health(ctx context.Context, base string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
	code, data, err := c.do(req)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("healthz: %d %.120s", code, data)
	}
	return nil
}

// refresh rotates the session's refresh token; the caller holds s.mu.
func (c *loadClient) refresh(ctx context.Context, base string, s *loadSession) error {
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {s.refresh}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/oauth/token", bytes.NewReader([]byte(form.Encode())))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", c.appBasic)
	code, data, err := c.do(req)
	if err != nil {
		return err
	}
	var out struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		IDToken      string `json:"id_token"`
	}
	if code != http.StatusOK || json.Unmarshal(data, &out) != nil || out.RefreshToken == "" || out.AccessToken == "" || out.IDToken == "" {
		return fmt.Errorf("refresh: %d %.120s", code, data)
	}
	s.refresh = out.RefreshToken
	s.access.Store(&out.AccessToken)
	return nil
}

// sso opens the second app in the person's browser: /authorize, the login
// page answered from the session cookie, the callback, up to the code.
func (c *loadClient) ssoAuthorize(ctx context.Context, s *loadSession) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.ssoURL, nil)
	resp, err := s.browser.Do(req)
	if err != nil {
		return err
	}
	if _, err := codeFrom(resp); err != nil {
		return fmt.Errorf("sso: %w", err)
	}
	return nil
}

// op runs one request of kind k on a random session, at a random replica
// (SSO: through the issuer, as a browser), and returns its latency (for
// refresh, from when the session's token was free).
func (c *loadClient) op(ctx context.Context, k kind, sessions []*loadSession, rng *rand.Rand) (time.Duration, error) {
	s := sessions[rng.IntN(len(sessions))]
	if k == kindRefresh {
		// A refresh token may be presented once: presenting it twice is
		// reuse and ends the session. One refresh per session at a time.
		locked := false
		for range 4 {
			if locked = s.mu.TryLock(); locked {
				break
			}
			s = sessions[rng.IntN(len(sessions))]
		}
		if !locked {
			s.mu.Lock()
		}
		defer s.mu.Unlock()
	}
	base := c.p.replicas[rng.IntN(len(c.p.replicas))].base
	start := time.Now()
	var err error
	switch k {
	case kindIntrospect:
		err = c.introspect(ctx, base, s)
	case kindHeartbeat:
		err = c.bearer(ctx, http.MethodPost, base+"/activity", s, activeTrue)
	case kindStatus:
		err = c.bearer(ctx, http.MethodGet, base+"/session", s, activeTrue)
	case kindUserinfo:
		err = c.bearer(ctx, http.MethodGet, base+"/userinfo", s, nil)
	case kindHealth:
		err = c.health(ctx, base)
	case kindForwardAuth:
		err = c.bearer(ctx, http.MethodGet, base+"/forward-auth?aud=load-app", s, nil)
	case kindRefresh:
		err = c.refresh(ctx, base, s)
	case kindSSO:
		err = c.ssoAuthorize(ctx, s)
	}
	return time.Since(start), err
}
