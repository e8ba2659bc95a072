// Package devsim is a fixture device simulator: bench may use an adapter's
// codec.
package devsim

import "example.com/fixture/transport/mqtt/iotda"

const Topic = iotda.Up
