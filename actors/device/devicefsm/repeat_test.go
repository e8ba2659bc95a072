package devicefsm

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

// TestRepeatedReportJournalsNothing: in every state of the matrix, a device
// report stepped a second time right after the first (the same input, a
// second later) yields no events. The engine counts such a repeat as a
// duplicate (otafleet_uplinks_duplicate_total) and journals nothing for it
// because of this property, never by dropping events: it may still yield
// effects (an acknowledgement or a segment the device asks for again).
func TestRepeatedReportJournalsNothing(t *testing.T) {
	cfg := DefaultConfig()
	for _, cls := range stateClasses() {
		for _, kind := range inputKinds() {
			in := sample(kind, cls.s)
			if in == nil || !in.IsReport() {
				continue
			}
			s1, _, err := Step(cfg, cloneState(cls.s), in)
			if err != nil {
				continue
			}
			again := proto.CloneOf(in)
			again.AtUnixNano += int64(time.Second)
			_, res, err := Step(cfg, s1, again)
			if err != nil {
				t.Errorf("%s × %s: the repeat is refused: %v", cls.name, kind, err)
				continue
			}
			if len(res.Events) > 0 {
				t.Errorf("%s × %s: the repeat journals %v", cls.name, kind, res.Events)
			}
		}
	}
}
