// Package static serves the provider's static assets: the stylesheet and the
// browser idle library (idleguard.js), embedded into the binary.
package static
