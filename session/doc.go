// Package session is the durable record of people and their sessions:
// users, authentication and application sessions, signing keys, the
// back-channel logout outbox and the audit trail, with a SQLite backend.
//
// Callers depend on the small interfaces they declare themselves; *SQLite
// satisfies all of them, and storetest holds the behaviour tests that any
// other backend must pass.
package session
