package oidc

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
)

// maxBody bounds every request body.
const maxBody = 64 << 10

// maxAuthorizeQuery bounds an authorization request, query and body
// together (boundAuthorize); every legitimate one is far smaller, and it is
// stored until the code exchange.
const maxAuthorizeQuery = 8 << 10

type requestIDKey struct{}

// edge wraps every route: request id, bounded bodies, baseline security
// headers, and a recovered panic answers 500 instead of killing the
// connection (and is logged with its stack).
func (p *Provider) edge(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := randomB64(9)
		ctx := context.WithValue(r.Context(), requestIDKey{}, id)
		r = r.WithContext(ctx)
		h := w.Header()
		h.Set("X-Request-Id", id)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				p.cfg.Logger.ErrorContext(ctx, "panic", "value", v, "request_id", id, "stack", string(debug.Stack()))
				writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error", "error_description": "internal error, request id " + id})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// serverError logs err with the request id and answers 500 without detail.
func (p *Provider) serverError(w http.ResponseWriter, r *http.Request, err error) {
	id, _ := r.Context().Value(requestIDKey{}).(string)
	p.cfg.Logger.ErrorContext(r.Context(), "server error", slog.String("request_id", id), slog.Any("error", err),
		slog.String("path", r.URL.Path))
	writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error", "error_description": "internal error, request id " + id})
}

// authorizeErrorPage turns the JSON error that the protocol layer answers
// for an authorization request it must not redirect (unknown client,
// unregistered redirect_uri) into a readable page for the person whose
// browser it is. Redirects and successes pass through untouched.
func (p *Provider) authorizeErrorPage(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec, e := catchError(next, w, r)
		if rec == nil {
			return
		}
		msg := "The application sent an invalid sign-in request."
		if e.Description != "" {
			msg += " " + e.Description
		}
		if e.Error != "" {
			msg += " (" + e.Error + ")"
		}
		p.messagePage(w, r, rec.status, "Sign-in request refused", msg)
	})
}

// oauthError is the body of an OAuth error response.
type oauthError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

// catchError serves r with next, holding back a 4xx JSON error; it returns
// nil when the response went through untouched.
func catchError(next http.Handler, w http.ResponseWriter, r *http.Request) (*errorCatcher, oauthError) {
	rec := &errorCatcher{ResponseWriter: w}
	next.ServeHTTP(rec, r)
	var e oauthError
	if !rec.caught {
		return nil, e
	}
	_ = json.Unmarshal(rec.body.Bytes(), &e)
	return rec, e
}

// errorCatcher holds back a 4xx JSON response so that it can be rendered as
// a page; anything else is written through.
type errorCatcher struct {
	http.ResponseWriter
	status int
	caught bool
	body   bytes.Buffer
}

func (c *errorCatcher) WriteHeader(status int) {
	if status >= 400 && status < 500 && strings.HasPrefix(c.Header().Get("Content-Type"), "application/json") {
		c.status, c.caught = status, true
		c.Header().Del("Content-Type")
		return
	}
	c.ResponseWriter.WriteHeader(status)
}

func (c *errorCatcher) Write(b []byte) (int, error) {
	if c.caught {
		return c.body.Write(b)
	}
	return c.ResponseWriter.Write(b)
}

// invalidClient401 answers invalid_client with 401 and a WWW-Authenticate
// challenge, as RFC 6749 section 5.2 asks; the protocol layer answers 400.
func invalidClient401(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec, e := catchError(next, w, r)
		if rec == nil {
			return
		}
		status := rec.status
		if e.Error == "invalid_client" {
			status = http.StatusUnauthorized
			w.Header().Set("WWW-Authenticate", `Basic realm="idleguard"`)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(rec.body.Bytes())
	})
}

// requireClientAuth refuses an introspection request that carries no client
// credentials with 401 invalid_client (RFC 7662 section 2.1: the endpoint
// is for authenticated resource servers).
func requireClientAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" && r.PostFormValue("client_secret") == "" && r.PostFormValue("client_assertion") == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="idleguard"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client", "error_description": "client authentication required"})
			return
		}
		next.ServeHTTP(w, r)
	})
}
