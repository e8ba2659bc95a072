//go:build ignore

// Gen writes tables; it is run by go generate.
package main
