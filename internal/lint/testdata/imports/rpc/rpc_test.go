package rpc

import (
	"testing"

	"example.com/fixture/bench/sim/devsim"
	"example.com/fixture/transport/mqtt"
)

// Tests may import the simulators and the adapters.
func TestX(t *testing.T) { _, _ = devsim.Topic, mqtt.Topic }
