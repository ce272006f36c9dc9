// Package templates holds the HTML pages people see at the provider (sign
// in, messages, signed out), embedded into the binary.
package templates
