package oidc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/session"
)

// maxBody bounds every request body.
const maxBody = 64 << 10

// bodyLimit is the bound of a request body to path: maxBody, but for the
// batched activity of resource servers, which authenticate before it is
// read.
func bodyLimit(path string) int64 {
	if path == "/activity/batch" {
		return maxBatchBody
	}
	return maxBody
}

// maxAuthorizeQuery bounds an authorization request, query and body
// together (boundAuthorize); every legitimate one is far smaller, and it is
// stored until the code exchange.
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
			r.Body = http.MaxBytesReader(w, r.Body, bodyLimit(r.URL.Path))
		}
		// No request waits on the database longer than its budget: every
		// store call takes this context (rule 10 of issue 10).
		ctx, cancel := context.WithTimeout(ctx, p.requestBudget(r))
		defer cancel()
		r = r.WithContext(ctx)
		w = retryAfter{w}
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

// requestBudget is how long a request may take before its store calls give
// up: DatabaseTimeout. A form that checks a password (checkPassword: the
// login form, the account page's confirmation), whose check may queue for
// verifyQueueWait (not the database's wait), gets that much more, and
// bounds its phases of database work by DatabaseTimeout itself (dbBudget).
func (p *Provider) requestBudget(r *http.Request) time.Duration {
	if r.Method == http.MethodPost && passwordForms[r.URL.Path] {
		return 3*p.cfg.DatabaseTimeout + verifyQueueWait
	}
	return p.cfg.DatabaseTimeout
}

// passwordForms are the paths whose POST runs checkPassword.
var passwordForms = map[string]bool{"/login": true, "/account/confirm": true}

// dbBudget bounds one phase of a request's database work by
// DatabaseTimeout.
func (p *Provider) dbBudget(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, p.cfg.DatabaseTimeout)
}

// serverError logs err, the cause, with the request id and answers 500
// without detail, or 503 temporarily_unavailable when the database could not
// be reached in time. Pages a browser sees turn it into a readable page
// (browserPage).
func (p *Provider) serverError(w http.ResponseWriter, r *http.Request, err error) {
	if unavailable(err) {
		p.logUnavailable(r.Context(), err)
		writeJSON(w, http.StatusServiceUnavailable, temporarilyUnavailable(r.Context()))
		return
	}
	p.internalError(w, r, http.StatusInternalServerError, err)
}

// retryAfterSeconds is what a 503 tells a client to wait before it tries
// again.
const retryAfterSeconds = "5"

// unavailable reports whether err means that the state a request needs
// could not be had: the database did not answer in time or could not be
// reached, or (several replicas) this replica cannot vouch for sessions.
func unavailable(err error) bool {
	return errors.Is(err, activity.ErrUnavailable) || session.IsUnavailable(err)
}

func (p *Provider) logUnavailable(ctx context.Context, err error) {
	p.cfg.Logger.ErrorContext(ctx, "unavailable", slog.Any("error", err))
}

// temporarilyUnavailable is the OAuth error of a request that could not be
// served for want of the database (RFC 6749 section 4.1.2.1's
// temporarily_unavailable), naming the request id.
func temporarilyUnavailable(ctx context.Context) *zoidc.Error {
	return &zoidc.Error{ErrorType: "temporarily_unavailable",
		Description: "the service is temporarily unavailable; try again shortly (request id " + requestID(ctx) + ")"}
}

// unavailableOr returns, for an error of unavailability, the protocol
// layer's 503 temporarily_unavailable (which it answers as is, also when
// it wraps it as the parent of another error), and err otherwise.
func (p *Provider) unavailableOr(ctx context.Context, err error) error {
	if err == nil || !unavailable(err) {
		return err
	}
	p.logUnavailable(ctx, err)
	return op.NewStatusError(temporarilyUnavailable(ctx), http.StatusServiceUnavailable)
}

// retryAfter adds Retry-After to every 503 that carries none.
type retryAfter struct{ http.ResponseWriter }

func (w retryAfter) WriteHeader(status int) {
	if status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", retryAfterSeconds)
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w retryAfter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// hideInternal logs an error that is not an OAuth error (a failed write,
// say) with its cause, and returns server_error naming only the request id:
// the protocol layer would otherwise put the internal text in the
// error_description of the redirect to the application. An error of
// unavailability becomes temporarily_unavailable (503).
func (p *Provider) hideInternal(ctx context.Context, err error) error {
	var oe *zoidc.Error
	if err == nil || errors.As(err, &oe) {
		return err
	}
	if unavailable(err) {
		return p.unavailableOr(ctx, err)
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
		if rec.status == http.StatusServiceUnavailable {
			p.messagePage(w, r, rec.status, "Temporarily unavailable",
				"The sign-in service cannot complete your request right now. Nothing was changed. Please try again in a moment "+
					"(reference "+requestID(r.Context())+").")
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

// internalError logs err with the request id and answers status with a
// body that names the request id and nothing else: internal error text
// (file names, database messages, library errors) never reaches a client.
func (p *Provider) internalError(w http.ResponseWriter, r *http.Request, status int, err error) {
	id := requestID(r.Context())
	p.cfg.Logger.ErrorContext(r.Context(), "server error", slog.Any("error", err), slog.String("method", r.Method),
		slog.String("path", r.URL.Path))
	writeJSON(w, status, map[string]string{"error": "server_error", "error_description": "internal error, request id " + id})
}

// hideInternalErrors stands between the protocol layer and the client. The
// layer answers an error that is not an OAuth error with its text: as
// error_description of a JSON 5xx (a database message, "securecookie: the
// value is too long"), as a plain-text 4xx page (the authorization callback,
// parent error included), or as error_description of a server_error
// redirected to the client. Each is logged with the request id and
// replaced: a 5xx by internalError's body, a plain-text refusal by a
// readable page, a redirected description by the request id.
func (p *Provider) hideInternalErrors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &errorCatcher{ResponseWriter: w, onRedirect: func(h http.Header) { p.hideRedirectedError(r, h) },
			catch: func(status int, contentType string) bool {
				return (status >= 500 && status != http.StatusServiceUnavailable) ||
					(status >= 400 && strings.HasPrefix(contentType, "text/plain"))
			}}
		next.ServeHTTP(rec, r)
		switch {
		case !rec.caught:
		case rec.status >= 500 && errors.Is(r.Context().Err(), context.DeadlineExceeded):
			// The database did not answer within the request's time.
			p.logUnavailable(r.Context(), fmt.Errorf("protocol layer: %s", bytes.TrimSpace(rec.body.Bytes())))
			writeJSON(w, http.StatusServiceUnavailable, temporarilyUnavailable(r.Context()))
		case rec.status >= 500:
			p.internalError(w, r, rec.status, fmt.Errorf("protocol layer: %s", bytes.TrimSpace(rec.body.Bytes())))
		default:
			p.cfg.Logger.InfoContext(r.Context(), "request refused", slog.String("detail", string(bytes.TrimSpace(rec.body.Bytes()))), slog.String("path", r.URL.Path))
			p.messagePage(w, r, rec.status, "Request refused",
				"This request is unknown, has expired or cannot be completed. Go back to the application and try again.")
		}
	})
}

// hideRedirectedError replaces the error_description of a server_error
// that a redirect in h carries to a client (RFC 6749 section 4.1.2.1), in
// the query or the fragment, by the request id.
func (p *Provider) hideRedirectedError(r *http.Request, h http.Header) {
	loc, err := url.Parse(h.Get("Location"))
	if err != nil {
		return
	}
	hide := func(raw string) (string, bool) {
		q, err := url.ParseQuery(raw)
		if err != nil || q.Get("error") != "server_error" {
			return raw, false
		}
		p.cfg.Logger.ErrorContext(r.Context(), "server error sent to the client", slog.String("error_description", q.Get("error_description")), slog.String("path", r.URL.Path))
		q.Set("error_description", "internal error, request id "+requestID(r.Context()))
		return q.Encode(), true
	}
	query, inQuery := hide(loc.RawQuery)
	fragment, inFragment := hide(loc.EscapedFragment())
	if !inQuery && !inFragment {
		return
	}
	loc.RawQuery = query
	if inFragment {
		loc.Fragment, _ = url.PathUnescape(fragment)
		loc.RawFragment = fragment
	}
	h.Set("Location", loc.String())
}

// authorizeErrorPage turns the JSON error that the protocol layer answers
// for an authorization request it must not redirect (unknown client,
// unregistered redirect_uri) into a readable page for the person whose
// browser it is. Redirects and successes pass through untouched.
func (p *Provider) authorizeErrorPage(next http.Handler) http.Handler {
	return p.errorPage("Sign-in request refused", "The application sent an invalid sign-in request.", next)
}

// errorPage renders the 4xx JSON error of a browser-facing protocol
// endpoint as a readable page titled title, whose text starts with intro.
func (p *Provider) errorPage(title, intro string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec, e := catchError(next, w, r)
		if rec == nil {
			return
		}
		msg := intro
		if e.Description != "" {
			msg += " " + e.Description
		}
		if e.Error != "" {
			msg += " (" + e.Error + ")"
		}
		p.messagePage(w, r, rec.status, title, msg)
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
// written through. onRedirect, if set, sees a redirect's headers first.
type errorCatcher struct {
	http.ResponseWriter
	catch       func(status int, contentType string) bool
	onRedirect  func(http.Header)
	status      int
	contentType string
	caught      bool
	body        bytes.Buffer
}

func (c *errorCatcher) WriteHeader(status int) {
	if c.onRedirect != nil && status >= 300 && status < 400 {
		c.onRedirect(c.Header())
	}
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

// noStore forbids caching a response that carries tokens, token metadata or
// personal data, for HTTP/1.1 and HTTP/1.0 caches alike (RFC 6749 section
// 5.1, RFC 7662 section 2.2, RFC 6750 section 4).
func noStore(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
}

// credentialEndpoint guards an endpoint where clients authenticate (token,
// introspection, revocation). Its answers, errors included, are never
// cached. Credentials and tokens travel only in the body of a POST (RFC 6749
// section 3.2): the protocol layer reads the query string too, so a request
// that has one is refused before anything reads it. A URL ends up in
// proxy logs and browser history; a secret sent in one is never accepted.
func credentialEndpoint(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		noStore(w)
		if r.URL.RawQuery != "" {
			writeJSON(w, http.StatusBadRequest, oauthError{Error: "invalid_request",
				Description: "parameters must be sent in the request body, not in the URL"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// postOnly answers any method but POST on a credential endpoint with 405,
// except the CORS preflight (OPTIONS), which preflight answers: a browser
// app asks it before every token request.
func postOnly(preflight http.Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			preflight.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, oauthError{Error: "invalid_request",
			Description: "this endpoint accepts POST only (RFC 6749 section 3.2)"})
	}
}
