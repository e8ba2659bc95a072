package actors

import (
	"fmt"
	"strings"
	"testing"

	"github.com/otafleet/otafleet/persistence"
)

// TestMachineForEveryKind: each kind the engine recovers has its own machine,
// and an unknown kind fails loudly instead of running as a task.
func TestMachineForEveryKind(t *testing.T) {
	e := &Engine{}
	for kind, want := range map[persistence.Kind]string{
		persistence.KindDevice: "*actors.deviceMachine",
		persistence.KindCell:   "*actors.cellMachine",
		persistence.KindTask:   "*actors.taskMachine",
	} {
		if got := fmt.Sprintf("%T", e.machineFor(Address{Kind: kind, ID: "x"})); got != want {
			t.Errorf("machineFor(%s) = %s, want %s", kind, got, want)
		}
	}
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(r.(string), `kind "gadget"`) {
			t.Fatalf("machineFor(unknown kind) recovered %v, want a panic naming the kind", r)
		}
	}()
	e.machineFor(Address{Kind: "gadget", ID: "x"})
}
