// Package actors is a fixture engine: it imports the seam package transport,
// which anyone may.
package actors

import "example.com/fixture/transport"

type D = transport.Downlinks
