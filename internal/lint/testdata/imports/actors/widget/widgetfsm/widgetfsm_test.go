package widgetfsm

import (
	"testing"

	"example.com/fixture/transport/mqtt"
)

// Test-only imports are not checked.
func TestX(t *testing.T) { _ = mqtt.Topic }
