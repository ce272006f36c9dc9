package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/idleguard/idleguard/session"
)

// The Shared Signals endpoints (SSF 1.0 sections 7 and 8, RFC 8936). Every
// one but the metadata is called by a receiver, a client with
// resource_server: true, with a bearer token of its client_credentials
// grant; a receiver sees and changes its own streams only.

// Bounds on what a receiver may send.
const (
	maxPollEvents   = 100  // SETs in one poll answer
	maxPollAcks     = 1000 // acknowledgements in one poll request
	maxEventTypes   = 32
	maxDescription  = 256
	maxState        = 1024
	maxHeaderLength = 4096
	maxPushURL      = 2048
)

// ssfError is an SSF management or poll error: an HTTP status and an RFC
// 8935-style body ({"err": ..., "description": ...}).
type ssfError struct {
	status int
	err    string
	desc   string
}

func (e *ssfError) Error() string { return e.desc }

func badRequest(desc string) *ssfError {
	return &ssfError{status: http.StatusBadRequest, err: "invalid_request", desc: desc}
}

var errStreamNotFound = &ssfError{status: http.StatusNotFound, err: "not_found", desc: "no such stream for this receiver"}

// writeSSF answers err: an *ssfError as it says, anything else as a logged
// 500 without detail.
func (p *Provider) writeSSF(w http.ResponseWriter, r *http.Request, err error) {
	var se *ssfError
	switch {
	case errors.As(err, &se):
		writeJSON(w, se.status, map[string]string{"err": se.err, "description": se.desc})
	case errors.Is(err, session.ErrNotFound):
		p.writeSSF(w, r, errStreamNotFound)
	default:
		p.serverError(w, r, err)
	}
}

// ssfConfiguration is the transmitter's metadata (SSF 1.0 section 7.1).
func (p *Provider) ssfConfiguration(w http.ResponseWriter, _ *http.Request) {
	iss := p.issuer()
	writeJSON(w, http.StatusOK, map[string]any{
		"spec_version":               "1_0",
		"issuer":                     iss,
		"jwks_uri":                   iss + "/keys",
		"delivery_methods_supported": []string{session.MethodPush, session.MethodPoll},
		"configuration_endpoint":     iss + "/ssf/streams",
		"status_endpoint":            iss + "/ssf/status",
		"verification_endpoint":      iss + "/ssf/verify",
		"authorization_schemes":      []map[string]string{{"spec_urn": "urn:ietf:rfc:6749"}},
		"default_subjects":           "ALL",
	})
}

// receiverHandler is an SSF endpoint for the authenticated receiver rs.
type receiverHandler func(w http.ResponseWriter, r *http.Request, rs *Client) error

// receiverAPI authenticates the receiver: a bearer token of a client's own
// (client_credentials) grant, unexpired and unrevoked, of a client with
// resource_server: true. A person's token is never a receiver's.
func (p *Provider) receiverAPI(h receiverHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		noStore(w)
		tok := bearer(r)
		if tok == "" {
			writeNoToken(w)
			return
		}
		id, err := p.accessTokenID(tok)
		var tid tokenID
		if err == nil {
			tid, err = parseTokenID(id)
		}
		_, revoked := p.revoked.Load(id)
		c := p.clients[tid.clientID]
		switch {
		case err != nil || tid.appSessionID != "" || c == nil:
			writeChallenge(w, http.StatusUnauthorized, "invalid_token", "a token of the receiver's client_credentials grant is required", nil)
		case revoked || !p.now().Before(tid.expires):
			writeChallenge(w, http.StatusUnauthorized, "invalid_token", "the token has expired or was revoked", nil)
		case !c.ResourceServer:
			writeJSON(w, http.StatusForbidden, map[string]string{"err": "access_denied", "description": "the client is not a resource server"})
		default:
			if err := h(w, r, c); err != nil {
				p.writeSSF(w, r, err)
			}
		}
	}
}

// decodeBody decodes a JSON object request body into v.
func decodeBody(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return badRequest("the body is not the JSON object expected: " + err.Error())
	}
	return nil
}

// deliveryBody is a stream's delivery member.
type deliveryBody struct {
	Method              string `json:"method"`
	EndpointURL         string `json:"endpoint_url,omitempty"`
	AuthorizationHeader string `json:"authorization_header,omitempty"`
}

// streamConfig is a stream's configuration as SSF 1.0 section 8.1.1 shows it.
type streamConfig struct {
	StreamID                string       `json:"stream_id"`
	Issuer                  string       `json:"iss"`
	Audience                string       `json:"aud"`
	EventsSupported         []string     `json:"events_supported"`
	EventsRequested         []string     `json:"events_requested"`
	EventsDelivered         []string     `json:"events_delivered"`
	Delivery                deliveryBody `json:"delivery"`
	MinVerificationInterval int64        `json:"min_verification_interval"`
	Description             string       `json:"description,omitempty"`
}

// streamBody is a create, update or replace request. Pointers tell an
// absent member from an empty one.
type streamBody struct {
	StreamID                *string          `json:"stream_id"`
	Delivery                *deliveryBody    `json:"delivery"`
	EventsRequested         *[]string        `json:"events_requested"`
	Description             *string          `json:"description"`
	Issuer                  *string          `json:"iss"`
	Audience                *json.RawMessage `json:"aud"`
	EventsSupported         *[]string        `json:"events_supported"`
	EventsDelivered         *[]string        `json:"events_delivered"`
	MinVerificationInterval *int64           `json:"min_verification_interval"`
}

// eventsDelivered is the intersection of what the provider supports and
// what the stream requested, in the provider's order.
func eventsDelivered(requested []string) []string {
	out := []string{}
	for _, e := range eventsSupported {
		if slices.Contains(requested, e) {
			out = append(out, e)
		}
	}
	return out
}

func (p *Provider) pollURL(streamID string) string {
	return p.issuer() + "/ssf/poll/" + url.PathEscape(streamID)
}

func (p *Provider) streamConfig(st *session.Stream) streamConfig {
	d := deliveryBody{Method: st.Method, EndpointURL: st.EndpointURL, AuthorizationHeader: st.AuthorizationHeader}
	if st.Method == session.MethodPoll {
		d.EndpointURL = p.pollURL(st.ID)
	}
	return streamConfig{StreamID: st.ID, Issuer: p.issuer(), Audience: st.Receiver, EventsSupported: eventsSupported,
		EventsRequested: append([]string{}, st.EventsRequested...), EventsDelivered: eventsDelivered(st.EventsRequested),
		Delivery: d, MinVerificationInterval: int64(p.cfg.SSF.VerificationInterval / time.Second), Description: st.Description}
}

// checkTransmitterFields refuses transmitter-supplied members that do not
// match what the provider says (SSF 1.0 section 8.1.1.3: they MAY be
// present but MUST match). current is the stream before the change (nil
// on creation).
func (p *Provider) checkTransmitterFields(b *streamBody, rs *Client, current *session.Stream) error {
	want := streamConfig{Issuer: p.issuer(), EventsSupported: eventsSupported, MinVerificationInterval: int64(p.cfg.SSF.VerificationInterval / time.Second)}
	if current != nil {
		want = p.streamConfig(current)
	}
	switch {
	case b.Issuer != nil && *b.Issuer != want.Issuer:
		return badRequest("iss does not match the transmitter's")
	case b.Audience != nil && !audienceIs(*b.Audience, rs.ID):
		return badRequest("aud does not match the receiver")
	case b.EventsSupported != nil && !sameSet(*b.EventsSupported, want.EventsSupported):
		return badRequest("events_supported does not match the transmitter's")
	case b.EventsDelivered != nil && current != nil && !sameSet(*b.EventsDelivered, want.EventsDelivered):
		return badRequest("events_delivered does not match the stream's")
	case b.MinVerificationInterval != nil && *b.MinVerificationInterval != want.MinVerificationInterval:
		return badRequest("min_verification_interval does not match the transmitter's")
	}
	return nil
}

func audienceIs(raw json.RawMessage, id string) bool {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return one == id
	}
	var many []string
	return json.Unmarshal(raw, &many) == nil && len(many) == 1 && many[0] == id
}

func sameSet(a, b []string) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(s string) bool { return !slices.Contains(b, s) })
}

// applyStream writes the receiver-supplied members of b into st. With
// replace, absent members are reset (a PUT, SSF 1.0 section 8.1.1.4);
// otherwise they are left as they are (a PATCH, or a creation's defaults).
func (p *Provider) applyStream(b *streamBody, st *session.Stream, replace bool) error {
	if replace {
		st.Method, st.EndpointURL, st.AuthorizationHeader, st.EventsRequested, st.Description = session.MethodPoll, "", "", nil, ""
	}
	if b.Delivery != nil {
		if err := p.applyDelivery(b.Delivery, st); err != nil {
			return err
		}
	}
	if b.EventsRequested != nil {
		events := *b.EventsRequested
		if len(events) > maxEventTypes || slices.ContainsFunc(events, func(e string) bool { return e == "" || len(e) > 256 }) {
			return badRequest("events_requested: at most 32 event type URIs of at most 256 characters")
		}
		st.EventsRequested = dedupe(events)
	}
	if b.Description != nil {
		st.Description = truncate(*b.Description, maxDescription)
	}
	st.DeliversSessionRevoked = slices.Contains(st.EventsRequested, session.EventSessionRevoked)
	return nil
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n])
}

// applyDelivery checks and sets a stream's delivery method. A push
// endpoint is https (http on a loopback host, for development), and its
// authorization header a single line; a poll endpoint is the provider's.
func (p *Provider) applyDelivery(d *deliveryBody, st *session.Stream) error {
	switch d.Method {
	case session.MethodPush:
		if err := checkPushURL(d.EndpointURL); err != nil {
			return err
		}
		if len(d.AuthorizationHeader) > maxHeaderLength || strings.ContainsFunc(d.AuthorizationHeader, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return badRequest("delivery.authorization_header must be one line of at most 4096 characters")
		}
		st.Method, st.EndpointURL, st.AuthorizationHeader = d.Method, d.EndpointURL, d.AuthorizationHeader
	case session.MethodPoll:
		if d.EndpointURL != "" && d.EndpointURL != p.pollURL(st.ID) {
			return badRequest("delivery.endpoint_url of a poll stream is the transmitter's")
		}
		if d.AuthorizationHeader != "" {
			return badRequest("delivery.authorization_header is for push streams")
		}
		st.Method, st.EndpointURL, st.AuthorizationHeader = d.Method, "", ""
	default:
		return badRequest("delivery.method: want " + session.MethodPush + " (push) or " + session.MethodPoll + " (poll)")
	}
	return nil
}

func checkPushURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case raw == "" || err != nil || !u.IsAbs() || u.Host == "":
		return badRequest("delivery.endpoint_url: an absolute URL is required for push")
	case len(raw) > maxPushURL || u.User != nil || u.Fragment != "":
		return badRequest("delivery.endpoint_url: no credentials or fragment, at most 2048 characters")
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && IsLoopback(u.Hostname()):
		return nil
	}
	return badRequest("delivery.endpoint_url must use https (http only on a loopback host)")
}

// IsLoopback reports whether host is localhost or a loopback address: the
// only hosts where plain http is accepted (the issuer, push endpoints, a
// database without TLS), since nothing leaves the machine.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// createStream is SSF 1.0 section 8.1.1.1. Without a delivery member the
// stream is polled.
func (p *Provider) createStream(w http.ResponseWriter, r *http.Request, rs *Client) error {
	var b streamBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if err := p.checkTransmitterFields(&b, rs, nil); err != nil {
		return err
	}
	st := &session.Stream{ID: session.NewID(), Receiver: rs.ID, Method: session.MethodPoll, Status: streamEnabled, CreatedAt: p.now()}
	if err := p.applyStream(&b, st, false); err != nil {
		return err
	}
	if err := p.store.CreateStream(r.Context(), st, p.cfg.SSF.MaxStreams); err != nil {
		if errors.Is(err, session.ErrConflict) {
			return &ssfError{status: http.StatusConflict, err: "conflict", desc: "this receiver has the most streams allowed; update or delete one"}
		}
		return err
	}
	writeJSON(w, http.StatusCreated, p.streamConfig(st))
	return nil
}

// readStreams is SSF 1.0 section 8.1.1.2: one stream, or the receiver's list.
func (p *Provider) readStreams(w http.ResponseWriter, r *http.Request, rs *Client) error {
	if id := r.URL.Query().Get("stream_id"); id != "" {
		st, err := p.store.Stream(r.Context(), rs.ID, id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, p.streamConfig(st))
		return nil
	}
	list, err := p.store.Streams(r.Context(), rs.ID)
	if err != nil {
		return err
	}
	out := make([]streamConfig, 0, len(list))
	for _, st := range list {
		out = append(out, p.streamConfig(st))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// changeStream is PATCH (update, section 8.1.1.3) or PUT (replace,
// section 8.1.1.4).
func (p *Provider) changeStream(w http.ResponseWriter, r *http.Request, rs *Client) error {
	var b streamBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if b.StreamID == nil || *b.StreamID == "" {
		return badRequest("stream_id is required")
	}
	st, err := p.store.Stream(r.Context(), rs.ID, *b.StreamID)
	if err != nil {
		return err
	}
	if err := p.checkTransmitterFields(&b, rs, st); err != nil {
		return err
	}
	if err := p.applyStream(&b, st, r.Method == http.MethodPut); err != nil {
		return err
	}
	if err := p.store.ReplaceStream(r.Context(), st); err != nil {
		return err
	}
	p.signalled()
	writeJSON(w, http.StatusOK, p.streamConfig(st))
	return nil
}

// deleteStream is SSF 1.0 section 8.1.1.5.
func (p *Provider) deleteStream(w http.ResponseWriter, r *http.Request, rs *Client) error {
	id := r.URL.Query().Get("stream_id")
	if id == "" {
		return badRequest("stream_id is required")
	}
	if err := p.store.DeleteStream(r.Context(), rs.ID, id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

type streamStatus struct {
	StreamID string `json:"stream_id"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`
}

// readStatus is SSF 1.0 section 8.1.2.1.
func (p *Provider) readStatus(w http.ResponseWriter, r *http.Request, rs *Client) error {
	id := r.URL.Query().Get("stream_id")
	if id == "" {
		return badRequest("stream_id is required")
	}
	st, err := p.store.Stream(r.Context(), rs.ID, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, streamStatus{StreamID: st.ID, Status: st.Status, Reason: st.StatusReason})
	return nil
}

// updateStatus is SSF 1.0 section 8.1.2.2. Disabling a stream drops the
// events it holds; enabling one sends those it held while paused.
func (p *Provider) updateStatus(w http.ResponseWriter, r *http.Request, rs *Client) error {
	var b streamStatus
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	switch {
	case b.StreamID == "":
		return badRequest("stream_id is required")
	case b.Status != streamEnabled && b.Status != streamPaused && b.Status != streamDisabled:
		return badRequest("status: want enabled, paused or disabled")
	}
	b.Reason = truncate(b.Reason, maxDescription)
	if err := p.store.SetStreamStatus(r.Context(), rs.ID, b.StreamID, b.Status, b.Reason); err != nil {
		return err
	}
	p.signalled()
	writeJSON(w, http.StatusOK, b)
	return nil
}

// verifyStream is SSF 1.0 section 8.1.4.2: a verification event is queued
// on the stream, at most once per min_verification_interval (429).
func (p *Provider) verifyStream(w http.ResponseWriter, r *http.Request, rs *Client) error {
	var b struct {
		StreamID string `json:"stream_id"`
		State    string `json:"state"`
	}
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	switch {
	case b.StreamID == "":
		return badRequest("stream_id is required")
	case len(b.State) > maxState:
		return badRequest("state: at most 1024 characters")
	}
	now := p.now()
	sig := session.Signal{StreamID: b.StreamID, JTI: session.NewID(), State: b.State, At: now}
	err := p.store.RequestVerification(r.Context(), rs.ID, sig, now.Add(-p.cfg.SSF.VerificationInterval))
	if errors.Is(err, session.ErrTooSoon) {
		w.Header().Set("Retry-After", "10")
		return &ssfError{status: http.StatusTooManyRequests, err: "too_many_requests", desc: "verification was requested less than min_verification_interval ago"}
	}
	if err != nil {
		return err
	}
	p.signalled()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// pollRequest is RFC 8936 section 2.4's request body.
type pollRequest struct {
	MaxEvents         *int                  `json:"maxEvents"`
	ReturnImmediately bool                  `json:"returnImmediately"`
	Ack               []string              `json:"ack"`
	SetErrs           map[string]pollSetErr `json:"setErrs"`
}

type pollSetErr struct {
	Err         string `json:"err"`
	Description string `json:"description"`
}

type pollResponse struct {
	Sets          map[string]string `json:"sets"`
	MoreAvailable bool              `json:"moreAvailable,omitempty"`
}

func (b *pollRequest) acks() []session.SignalAck {
	out := make([]session.SignalAck, 0, len(b.Ack)+len(b.SetErrs))
	for _, jti := range b.Ack {
		out = append(out, session.SignalAck{JTI: jti})
	}
	for jti, e := range b.SetErrs {
		out = append(out, session.SignalAck{JTI: jti, Err: truncate(e.Err, 64), Description: truncate(e.Description, maxDescription)})
	}
	return out
}

// poll is RFC 8936: acknowledgements (and SET errors, which are received
// SETs too) remove their events; then the queued SETs are returned, oldest
// first. Without returnImmediately, an empty queue holds the request until
// an event arrives or SSF.PollWait passes. An event stays queued until
// acknowledged, so a receiver that dies after a poll gets it again.
func (p *Provider) poll(w http.ResponseWriter, r *http.Request, rs *Client) error {
	ctx := r.Context()
	id := r.PathValue("stream")
	st, err := p.store.Stream(ctx, rs.ID, id)
	if err != nil {
		return err
	}
	if st.Method != session.MethodPoll {
		return badRequest("this stream delivers by push")
	}
	var b pollRequest
	if r.ContentLength != 0 {
		if err := decodeBody(r, &b); err != nil {
			return err
		}
	}
	max := maxPollEvents
	switch {
	case len(b.Ack)+len(b.SetErrs) > maxPollAcks:
		return badRequest("at most 1000 acknowledgements per request")
	case b.MaxEvents != nil && *b.MaxEvents < 0:
		return badRequest("maxEvents must not be negative")
	case b.MaxEvents != nil:
		max = min(*b.MaxEvents, maxPollEvents)
	}
	if acks := b.acks(); len(acks) > 0 {
		if _, err := p.store.AckSignals(ctx, rs.ID, id, acks, p.now()); err != nil {
			return err
		}
	}
	if max == 0 {
		writeJSON(w, http.StatusOK, pollResponse{Sets: map[string]string{}})
		return nil
	}
	rows, err := p.waitSignals(ctx, rs.ID, id, max+1, b.ReturnImmediately)
	if err != nil {
		return err
	}
	resp := pollResponse{Sets: make(map[string]string, len(rows)), MoreAvailable: len(rows) > max}
	for _, g := range rows[:min(len(rows), max)] {
		if resp.Sets[g.JTI], err = p.SignalToken(g); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// waitSignals returns up to limit events queued on an enabled stream,
// waiting (unless now, or the stream holds maxHeldPolls already) up to
// SSF.PollWait for the first.
func (p *Provider) waitSignals(ctx context.Context, receiver, id string, limit int, now bool) ([]session.Signal, error) {
	if !now {
		if now = !p.signals.hold(id); !now {
			defer p.signals.release(id)
		}
	}
	timer := time.NewTimer(p.cfg.SSF.PollWait)
	defer timer.Stop()
	for {
		woken, done := p.signals.wait()
		rows, err := p.store.PendingSignals(ctx, receiver, id, limit)
		if err != nil || len(rows) > 0 || now {
			done()
			return rows, err
		}
		select {
		case <-woken:
			done()
		case <-timer.C:
			done()
			return nil, nil
		case <-p.signals.stopped:
			done()
			return nil, nil
		case <-ctx.Done(): // the receiver went away: nothing to answer
			done()
			return nil, nil
		}
	}
}
