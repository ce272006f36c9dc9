package oidc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
)

// maxBody bounds every request body.
const maxBody = 64 << 10

// maxAuthorizeQuery bounds an authorization request's query string; every
// legitimate one is far smaller, and it is stored until the code exchange.
const maxAuthorizeQuery = 8 << 10

// edge wraps every route: request id, bounded bodies, baseline security
// headers, and a recovered panic answers 500 instead of killing the
// connection (and is logged with its stack).
func (p *Provider) edge(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := randomB64(9)
		ctx := context.WithValue(r.Context(), requestIDKey{}, id)
		ctx = context.WithValue(ctx, clientAddressKey{}, clientAddress(r, p.cfg.TrustedProxies))
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
				p.cfg.Logger.ErrorContext(ctx, "panic", "value", v, "stack", string(debug.Stack()))
				writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error", "error_description": "internal error, request id " + id})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// serverError logs err, the cause, with the request id and answers 500
// without detail. Pages a browser sees turn it into a readable page
// (browserPage).
func (p *Provider) serverError(w http.ResponseWriter, r *http.Request, err error) {
	p.cfg.Logger.ErrorContext(r.Context(), "server error", slog.Any("error", err), slog.String("method", r.Method),
		slog.String("path", r.URL.Path))
	writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error",
		"error_description": "internal error, request id " + requestID(r.Context())})
}

// hideInternal logs an error that is not an OAuth error (a failed write,
// say) with its cause, and returns server_error naming only the request id:
// the protocol layer would otherwise put the internal text in the
// error_description of the redirect to the application.
func (p *Provider) hideInternal(ctx context.Context, err error) error {
	var oe *zoidc.Error
	if err == nil || errors.As(err, &oe) {
		return err
	}
	p.cfg.Logger.ErrorContext(ctx, "server error", slog.Any("error", err))
	return zoidc.ErrServerError().WithDescription("internal error, request id %s", requestID(ctx))
}

// browserPage serves routes that a person's browser opens (sign-in,
// callback, logout): an error answered in JSON or plain text, by idleguard
// or by the protocol layer, becomes a readable page, and never shows
// internal text. The cause has been logged where it happened.
func (p *Provider) browserPage(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &errorCatcher{ResponseWriter: w, catch: func(status int, contentType string) bool {
			return status >= 400 && !strings.HasPrefix(contentType, "text/html")
		}}
		next.ServeHTTP(rec, r)
		if !rec.caught {
			return
		}
		if rec.status >= 500 {
			p.messagePage(w, r, rec.status, "Something went wrong",
				"The sign-in service could not complete your request. Please try again in a moment. If it keeps happening, "+
					"tell your administrator this reference: "+requestID(r.Context())+".")
			return
		}
		msg := "This link is unknown, incomplete or has expired. Go back to the application and try again."
		var e oauthError
		if strings.HasPrefix(rec.contentType, "application/json") && json.Unmarshal(rec.body.Bytes(), &e) == nil && e.Error != "" {
			msg = "The application sent an invalid request. " + e.Description + " (" + e.Error + ")"
		}
		p.messagePage(w, r, rec.status, "Request not completed", msg)
	})
}

// authorizeErrorPage turns the JSON error that the protocol layer answers
// for an authorization request it must not redirect (unknown client,
// unregistered redirect_uri) into a readable page for the person whose
// browser it is. Redirects and successes pass through untouched.
func (p *Provider) authorizeErrorPage(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.RawQuery) > maxAuthorizeQuery {
			p.messagePage(w, r, http.StatusRequestURITooLong, "Sign-in request refused",
				"The application sent a sign-in request that is too large.")
			return
		}
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
	rec := &errorCatcher{ResponseWriter: w, catch: func(status int, contentType string) bool {
		return status >= 400 && status < 500 && strings.HasPrefix(contentType, "application/json")
	}}
	next.ServeHTTP(rec, r)
	var e oauthError
	if !rec.caught {
		return nil, e
	}
	_ = json.Unmarshal(rec.body.Bytes(), &e)
	return rec, e
}

// errorCatcher holds back a response that catch selects (by status and
// content type) so that it can be rendered otherwise; anything else is
// written through.
type errorCatcher struct {
	http.ResponseWriter
	catch       func(status int, contentType string) bool
	status      int
	contentType string
	caught      bool
	body        bytes.Buffer
}

func (c *errorCatcher) WriteHeader(status int) {
	if ct := c.Header().Get("Content-Type"); c.catch(status, ct) {
		c.status, c.contentType, c.caught = status, ct, true
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
