package devicefsm

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

// FuzzStep decodes arbitrary bytes as a DeviceInput (as a transport or a peer
// node could hand over) and steps every state class with it: no panic, errors
// wrap ErrInvalidInput, and replay equals the live state.
func FuzzStep(f *testing.F) {
	for _, cls := range stateClasses()[:8] {
		for _, kind := range inputKinds() {
			b, err := proto.Marshal(sample(kind, cls.s))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	classes := stateClasses()
	f.Fuzz(func(t *testing.T, b []byte) {
		in := &messages.DeviceInput{}
		if proto.Unmarshal(b, in) != nil {
			return
		}
		for _, cls := range classes {
			next, res, err := Step(DefaultConfig(), cloneState(cls.s), in)
			if err != nil {
				if !errors.Is(err, ErrInvalidInput) {
					t.Fatalf("%s: %v", cls.name, err)
				}
				continue
			}
			replayed := cloneState(cls.s)
			for _, e := range res.Events {
				replayed = Evolve(replayed, e)
			}
			if dumpState(replayed) != dumpState(next) {
				t.Fatalf("%s: replay differs", cls.name)
			}
			_ = Resume(next)
		}
	})
}
