// Package activity is the provider's authoritative store of when each person
// was last active: it records activity from every source, applies the idle
// policy (the strictest live app wins), decides at request time whether a
// session is still valid, and runs the sweeper that ends sessions whose
// deadline has passed. With several replicas on one database it also keeps
// their memories in step (replica.go). See docs/idle-model.md.
package activity
