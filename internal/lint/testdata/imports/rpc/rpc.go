// Package rpc is a fixture API layer: it imports a simulator and an adapter's
// codec, which it must not.
package rpc

import (
	"example.com/fixture/bench/sim/devsim"
	"example.com/fixture/transport/mqtt/iotda"
)

const T = devsim.Topic + iotda.Up
