package messages

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestIsReport checks every input kind of the proto: the device reports (field
// numbers 20 to 39, the proto's "Device reports, from transports" block) and
// nothing else, so a new kind has to be placed on one side.
func TestIsReport(t *testing.T) {
	oneof := (&DeviceInput{}).ProtoReflect().Descriptor().Oneofs().ByName("kind")
	for i := range oneof.Fields().Len() {
		fd := oneof.Fields().Get(i)
		in := &DeviceInput{}
		m := in.ProtoReflect()
		m.Set(fd, protoreflect.ValueOfMessage(m.NewField(fd).Message()))
		want := fd.Number() >= 20 && fd.Number() < 40
		if got := in.IsReport(); got != want {
			t.Errorf("%s (field %d): IsReport() = %v, want %v", fd.Name(), fd.Number(), got, want)
		}
		if got := in.KindName(); got != string(fd.Name()) {
			t.Errorf("KindName() = %q, want %q", got, fd.Name())
		}
	}
	if (&DeviceInput{}).IsReport() || (&DeviceInput{}).KindName() != "" {
		t.Error("an input without kind is a report or has a kind name")
	}
}
