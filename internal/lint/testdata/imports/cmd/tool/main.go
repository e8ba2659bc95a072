// Command tool is a fixture command: cmd may import the simulators and the
// adapters.
package main

import (
	"example.com/fixture/bench/sim/devsim"
	"example.com/fixture/transport/mqtt"
)

func main() { println(devsim.Topic, mqtt.Topic) }
