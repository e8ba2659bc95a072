// Package clock is a fixture that follows the rules.
package clock

import "time"

type Clock interface{ Now() time.Time }
