// Package messages is a fixture: it imports the clock, which it must not.
package messages

import (
	"fmt"

	"example.com/fixture/internal/clock"
)

var _ = fmt.Sprint
var _ clock.Clock

const X = 1
