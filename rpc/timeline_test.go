package rpc

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/otafleet/otafleet/messages"
)

// TestRenderEveryDeviceEvent builds one event of every kind in the proto's
// oneof (so a kind added to messages fails here until the timeline has its
// own text for it), its text fields set, and checks that each renders as a known entry kind with
// a text of its own, not the generic note for unknown events.
func TestRenderEveryDeviceEvent(t *testing.T) {
	kinds := map[string]bool{kindJob: true, kindStage: true, kindReport: true, kindPresence: true, kindPermit: true, kindOutcome: true, kindNote: true}
	generic := renderDeviceEvent(&messages.DeviceEvent{AtUnixNano: 1}, &jobTrack{}, false).detail
	fields := (&messages.DeviceEvent{}).ProtoReflect().Descriptor().Oneofs().ByName("kind").Fields()
	if fields.Len() == 0 {
		t.Fatal("DeviceEvent has no kinds")
	}
	for i := range fields.Len() {
		fd := fields.Get(i)
		ev := &messages.DeviceEvent{AtUnixNano: 5}
		m := ev.ProtoReflect()
		sub := m.NewField(fd).Message()
		// Its text fields set, so that an empty text stands out.
		for j := range sub.Descriptor().Fields().Len() {
			if f := sub.Descriptor().Fields().Get(j); f.Kind() == protoreflect.StringKind && !f.IsList() {
				sub.Set(f, protoreflect.ValueOfString(string(f.Name())))
			}
		}
		m.Set(fd, protoreflect.ValueOfMessage(sub))
		jt := &jobTrack{task: "t1", last: "t0"}
		e := renderDeviceEvent(ev, jt, false)
		if !kinds[e.kind] || e.detail == "" || e.at != 5 {
			t.Errorf("%s: rendered as %+v", fd.Name(), e)
		}
		if e.detail == generic || strings.HasPrefix(e.detail, "event ") {
			t.Errorf("%s: rendered as the generic entry %q; give it a text in renderDeviceEvent", fd.Name(), e.detail)
		}
	}
}

// TestRenderUnknownDeviceEvent: an event whose kind this server does not
// know (it decodes as none) is shown as a note of the current job, not
// skipped.
func TestRenderUnknownDeviceEvent(t *testing.T) {
	e := renderDeviceEvent(&messages.DeviceEvent{AtUnixNano: 7}, &jobTrack{task: "t1"}, false)
	if e.kind != kindNote || e.taskID != "t1" || e.at != 7 || e.detail != "event of a kind this server does not know" {
		t.Errorf("rendered as %+v", e)
	}
}
