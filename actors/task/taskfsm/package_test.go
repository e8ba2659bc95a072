package taskfsm

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/otafleet/otafleet/messages"
)

// TestCreateKeepsEveryPackageField fills every field of the Package the
// proto declares (so a field added later is covered without editing this
// test) and checks that the task journals it whole, in a copy of its own,
// and hands it to the device jobs.
func TestCreateKeepsEveryPackageField(t *testing.T) {
	pkg := &messages.Package{}
	m := pkg.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.IsList() {
			if fd.Kind() != protoreflect.StringKind {
				t.Fatalf("%s: fill a list of %v in this test", fd.Name(), fd.Kind())
			}
			l := m.Mutable(fd).List()
			l.Append(protoreflect.ValueOfString("a"))
			l.Append(protoreflect.ValueOfString("b"))
			continue
		}
		var v protoreflect.Value
		switch fd.Kind() {
		case protoreflect.StringKind:
			v = protoreflect.ValueOfString(string(fd.Name()))
		case protoreflect.BoolKind:
			v = protoreflect.ValueOfBool(true)
		case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
			v = protoreflect.ValueOfUint32(uint32(100 + i))
		case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
			v = protoreflect.ValueOfUint64(uint64(100 + i))
		case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
			v = protoreflect.ValueOfInt32(int32(100 + i))
		case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
			v = protoreflect.ValueOfInt64(int64(100 + i))
		case protoreflect.BytesKind:
			v = protoreflect.ValueOfBytes([]byte(fd.Name()))
		default:
			t.Fatalf("%s: fill a %v in this test", fd.Name(), fd.Kind())
		}
		m.Set(fd, v)
	}
	c := validCreate("a")
	c.Package = pkg
	s, res := mustStep(t, DefaultConfig(), State{}, createInput(unitT0, c))
	created := res.Events[0].GetCreated().GetPackage()
	if !proto.Equal(created, pkg) {
		t.Fatalf("journaled package %v, want %v", created, pkg)
	}
	if created == pkg || &created.SourceVersions[0] == &pkg.SourceVersions[0] {
		t.Fatal("the journaled package shares memory with the caller's")
	}
	if job := res.Effects[0].GetStartJob().GetJob(); !proto.Equal(job.GetPackage(), pkg) {
		t.Fatalf("job package %v", job.GetPackage())
	}
	if !proto.Equal(s.Task().GetPackage(), pkg) {
		t.Fatalf("state package %v", s.Task().GetPackage())
	}
}
