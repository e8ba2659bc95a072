// Package helper is a fixture: not an fsm, so it may import the seam package
// transport.
package helper

import "example.com/fixture/transport"

type U = transport.Uplinks
