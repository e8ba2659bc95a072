// Package gadgetfsm is a fixture state machine that imports pebble (not
// required by the fixture module, so it does not even resolve).
package gadgetfsm

import "github.com/cockroachdb/pebble/v2"

var _ pebble.Options
