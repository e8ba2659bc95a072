// Package load is a fixture load generator: bench may import the simulators.
package load

import "example.com/fixture/bench/sim/devsim"

const T = devsim.Topic
