// Package clocktest is a fixture: it may import clock, but not mqtt.
package clocktest

import (
	"example.com/fixture/internal/clock"
	"example.com/fixture/transport/mqtt"
)

var _ clock.Clock

var _ = mqtt.Topic
