package lwm2mcodec

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// unhex decodes hex with white space and "|" separators (for readable
// golden vectors).
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	s = strings.NewReplacer(" ", "", "\n", "", "\t", "", "|", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

func mustPath(t testing.TB, s string) Path {
	t.Helper()
	p, err := ParsePath(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func equalValues(a, b []Value) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

func checkValues(t testing.TB, what string, got, want []Value) {
	t.Helper()
	if !equalValues(got, want) {
		t.Errorf("%s:\n got  %v\n want %v", what, got, want)
	}
}

// wantErr checks that err wraps target.
func wantErr(t testing.TB, what string, err, target error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want %v", what, target)
		return
	}
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v does not wrap %v", what, err, target)
	}
}

// interpret applies kinds to decoded values (as the engine does with the
// object model), failing the test when a value does not convert.
func interpret(t testing.TB, vs []Value, kinds []Kind) []Value {
	t.Helper()
	if len(vs) != len(kinds) {
		t.Fatalf("interpret: %d values, %d kinds: %v", len(vs), len(kinds), vs)
	}
	out := make([]Value, len(vs))
	for i, v := range vs {
		w, err := v.As(kinds[i])
		if err != nil {
			t.Fatalf("interpret %v as %s: %v", v, kinds[i], err)
		}
		out[i] = w
	}
	return out
}

func kindsOf(vs []Value) []Kind {
	ks := make([]Kind, len(vs))
	for i, v := range vs {
		ks[i] = v.Kind
	}
	return ks
}

// deviceObject is the Device object /3/0 of the LwM2M 1.0 TS examples
// (6.4.3.1 TLV, 6.4.4 JSON), typed as the object model types it.
func deviceObject() []Value {
	p := func(r int32) Path { return ResourcePath(3, 0, r) }
	ri := func(r, i int32) Path { return ResourceInstancePath(3, 0, r, i) }
	return []Value{
		StringValue(p(0), "Open Mobile Alliance"),
		StringValue(p(1), "Lightweight M2M Client"),
		StringValue(p(2), "345000123"),
		StringValue(p(3), "1.0"),
		IntValue(ri(6, 0), 1),
		IntValue(ri(6, 1), 5),
		IntValue(ri(7, 0), 3800),
		IntValue(ri(7, 1), 5000),
		IntValue(ri(8, 0), 125),
		IntValue(ri(8, 1), 900),
		IntValue(p(9), 100),
		IntValue(p(10), 15),
		IntValue(ri(11, 0), 0),
		TimeValue(p(13), 0x5182428F),
		StringValue(p(14), "+02:00"),
		StringValue(p(16), "U"),
	}
}

// radioValues is a /4/0 read: RSRP -95 dBm, cell ID 12345, SINR 12 dB.
func radioValues() []Value {
	return []Value{
		IntValue(ResourcePath(4, 0, 2), -95),
		IntValue(ResourcePath(4, 0, 8), 12345),
		IntValue(ResourcePath(4, 0, 11), 12),
	}
}

// allKinds has one value of each kind but KindUnknown, under /3442/0.
func allKinds() []Value {
	p := func(r int32) Path { return ResourcePath(3442, 0, r) }
	return []Value{
		StringValue(p(0), "héllo \"wörld\" <&>\n"),
		IntValue(p(1), -9223372036854775808),
		FloatValue(p(2), 3.25),
		FloatValue(p(3), 0.1),
		BoolValue(p(4), true),
		BoolValue(p(5), false),
		OpaqueValue(p(6), []byte{0, 1, 2, 0xfe, 0xff}),
		TimeValue(p(7), 1767225600),
		ObjlnkValue(p(8), 3, 0),
		IntValue(ResourceInstancePath(3442, 0, 9, 0), 7),
		IntValue(ResourceInstancePath(3442, 0, 9, 300), 65536),
		StringValue(p(300), ""),
		OpaqueValue(p(10), []byte{}),
		FloatValue(p(11), -1e300),
		IntValue(p(12), 9223372036854775807),
		ObjlnkValue(p(13), 65535, 65535),
	}
}
