package rpc

import (
	"testing"

	"github.com/otafleet/otafleet/messages"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// TestTaskStatusMapping checks the conversion the API relies on, in both
// directions: every API TaskStatus is the vocabulary's TaskStatus of the same
// name and number, so messages.TaskStatus.Final answers for the API's values
// too, and no vocabulary status is missing from the API.
func TestTaskStatusMapping(t *testing.T) {
	for n, name := range v1.TaskStatus_name {
		if got := messages.TaskStatus(n).String(); got != name {
			t.Errorf("API TaskStatus %d is %s, the vocabulary's is %s", n, name, got)
		}
	}
	for n, name := range messages.TaskStatus_name {
		if got := v1.TaskStatus(n).String(); got != name {
			t.Errorf("vocabulary TaskStatus %d is %s, the API's is %s", n, name, got)
		}
	}
}
