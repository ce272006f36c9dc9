package oidc

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// clientAddress is the address of the client that sent r. The peer's
// address is the answer unless the peer is one of the trusted proxies; then
// the hops its proxies recorded are read from the right, and the first hop
// that is not a trusted proxy is the client. A value that cannot be parsed
// stops the walk at the proxy that wrote it: an address a client made up
// is never believed.
//
// The hops are read from the Forwarded header of RFC 7239 and from
// X-Forwarded-For. Most proxies maintain one of the two and pass the other
// through as the client sent it, so when a request carries both and they
// name different clients, one of them is the client's own: the peer is the
// answer then, and a forged header never chooses the address a client is
// counted under.
//
// WARNING: list only proxies that overwrite or append to these headers;
// trusting a proxy that passes a client's own header through lets anyone
// choose the address they are counted under.
func clientAddress(r *http.Request, trusted []netip.Prefix) string {
	peer := peerAddr(r.RemoteAddr)
	if !peer.IsValid() {
		return r.RemoteAddr
	}
	if !isTrusted(peer, trusted) {
		return peer.String()
	}
	fwd, xff := r.Header.Values("Forwarded"), r.Header.Values("X-Forwarded-For")
	byFwd := walkHops(peer, forwardedFor(fwd), trusted)
	byXFF := walkHops(peer, xForwardedFor(xff), trusted)
	switch {
	case len(fwd) == 0:
		return byXFF.String()
	case len(xff) == 0 || byFwd == byXFF:
		return byFwd.String()
	}
	return peer.String()
}

// walkHops reads hops from the right, starting at the trusted peer, and
// returns the first address that is not a trusted proxy (or the last
// trusted one, when a hop cannot be parsed or none is left).
func walkHops(peer netip.Addr, hops []string, trusted []netip.Prefix) netip.Addr {
	cur := peer
	for i := len(hops) - 1; i >= 0 && isTrusted(cur, trusted); i-- {
		next := peerAddr(hops[i])
		if !next.IsValid() {
			break
		}
		cur = next
	}
	return cur
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// peerAddr parses "ip", "ip:port", "[ipv6]" or "[ipv6]:port".
func peerAddr(s string) netip.Addr {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

func xForwardedFor(values []string) []string {
	var hops []string
	for _, v := range values {
		for _, h := range strings.Split(v, ",") {
			hops = append(hops, strings.TrimSpace(h))
		}
	}
	return hops
}

// forwardedFor returns the for= parameters of RFC 7239 Forwarded headers,
// in order; an element without one counts as an unknown hop.
func forwardedFor(values []string) []string {
	var hops []string
	for _, v := range values {
		for _, elem := range strings.Split(v, ",") {
			hop := "unknown"
			for _, pair := range strings.Split(elem, ";") {
				k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if ok && strings.EqualFold(k, "for") {
					hop = strings.Trim(val, `"`)
				}
			}
			hops = append(hops, hop)
		}
	}
	return hops
}
