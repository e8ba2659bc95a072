// Package widgetfsm is a fixture state machine that imports its shell.
package widgetfsm

import (
	"strings"

	"example.com/fixture/actors/widget"
	"example.com/fixture/messages"
)

var _ = strings.ToUpper(widget.T)

var _ = messages.X
