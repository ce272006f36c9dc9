// Package oidctest signs people in to a running idleguard provider the way a
// browser and a relying party do, for tests and load runs outside the oidc
// package: authorization code flow with PKCE through the real login form.
package oidctest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"

	"golang.org/x/oauth2"
)

// NewBrowser returns an HTTP client with a cookie jar that follows redirects
// on the provider's host and stops at the first redirect anywhere else (the
// relying party's callback).
func NewBrowser(issuer string, transport http.RoundTripper) *http.Client {
	jar, _ := cookiejar.New(nil)
	host := ""
	if u, err := url.Parse(issuer); err == nil {
		host = u.Host
	}
	return &http.Client{Jar: jar, Transport: transport, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if req.URL.Host != host {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

var formField = regexp.MustCompile(`name="(authRequestID|csrf)" value="([^"]*)"`)

// Login runs the code flow for cfg in browser, posting the login form with
// username and password when the provider shows it (an existing session
// answers without it), and exchanges the code.
func Login(ctx context.Context, browser *http.Client, issuer string, cfg *oauth2.Config, username, password string) (*oauth2.Token, error) {
	verifier := oauth2.GenerateVerifier()
	state := oauth2.GenerateVerifier()[:16]
	resp, err := browser.Get(cfg.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier)))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		page, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		fields := url.Values{"username": {username}, "password": {password}}
		for _, m := range formField.FindAllSubmatch(page, -1) {
			fields.Set(string(m[1]), string(m[2]))
		}
		if fields.Get("authRequestID") == "" {
			return nil, errors.New("no login form on the page")
		}
		resp, err = browser.PostForm(issuer+"/login", fields)
		if err != nil {
			return nil, err
		}
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return nil, fmt.Errorf("sign-in answered %s, want a redirect to the app", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return nil, err
	}
	q := loc.Query()
	if e := q.Get("error"); e != "" {
		return nil, fmt.Errorf("authorization error %s: %s", e, q.Get("error_description"))
	}
	if q.Get("state") != state {
		return nil, errors.New("state mismatch")
	}
	return cfg.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
}
