package lwm2mcodec

import (
	"bytes"
	"testing"
)

// deviceTLV is the Read /3/0 response of OMA-TS-LightweightM2M-V1_0
// 6.4.3.1 (Device object, single instance), one resource per line.
const deviceTLV = `
C8 00 14 4F 70 65 6E 20 4D 6F 62 69 6C 65 20 41 6C 6C 69 61 6E 63 65
C8 01 16 4C 69 67 68 74 77 65 69 67 68 74 20 4D 32 4D 20 43 6C 69 65 6E 74
C8 02 09 33 34 35 30 30 30 31 32 33
C3 03 31 2E 30
86 06 | 41 00 01 | 41 01 05
88 07 08 | 42 00 0E D8 | 42 01 13 88
87 08 | 41 00 7D | 42 01 03 84
C1 09 64
C1 0A 0F
83 0B | 41 00 00
C4 0D 51 82 42 8F
C6 0E 2B 30 32 3A 30 30
C1 10 55`

func TestTLVDeviceObjectGolden(t *testing.T) {
	golden := unhex(t, deviceTLV)
	want := deviceObject()

	got, err := Decode(FormatTLV, InstancePath(3, 0), golden)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range got {
		if v.Kind != KindUnknown {
			t.Fatalf("TLV value %v has a kind", v)
		}
	}
	checkValues(t, "decode /3/0", interpret(t, got, kindsOf(want)), want)

	if s, ok := StringAt(got, ResourcePath(3, 0, 3)); !ok || s != "1.0" {
		t.Errorf("StringAt /3/0/3 = %q, %v", s, ok)
	}
	if s, ok := StringAt(got, ResourcePath(3, 0, 0)); !ok || s != "Open Mobile Alliance" {
		t.Errorf("StringAt /3/0/0 = %q, %v", s, ok)
	}
	for _, c := range []struct {
		p    Path
		want int64
	}{
		{ResourceInstancePath(3, 0, 6, 1), 5},
		{ResourceInstancePath(3, 0, 7, 0), 3800},
		{ResourceInstancePath(3, 0, 8, 1), 900},
		{ResourcePath(3, 0, 9), 100},
		{ResourcePath(3, 0, 13), 1367491215},
	} {
		if i, ok := IntAt(got, c.p); !ok || i != c.want {
			t.Errorf("IntAt %s = %d, %v; want %d", c.p, i, ok, c.want)
		}
	}
	if _, ok := IntAt(got, ResourcePath(3, 0, 6)); ok {
		t.Error("IntAt of a multiple resource itself succeeded")
	}

	// The typed values encode back to exactly the spec's bytes.
	enc, err := EncodeTLV(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, golden) {
		t.Errorf("EncodeTLV:\n got  % X\n want % X", enc, golden)
	}

	// Read /3: the same wrapped in object instance 0 (length 121 = 0x79,
	// as in the TS).
	wrapped := append(unhex(t, "08 00 79"), golden...)
	got3, err := Decode(FormatTLV, ObjectPath(3), wrapped)
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "decode /3", interpret(t, got3, kindsOf(want)), want)
	enc3, err := EncodeTLVFor(ObjectPath(3), want)
	if err != nil || !bytes.Equal(enc3, wrapped) {
		t.Errorf("EncodeTLVFor /3 = % X, %v", enc3, err)
	}
	// A /3/0 read answered with the instance wrapper is accepted too.
	if got30, err := Decode(FormatTLV, InstancePath(3, 0), wrapped); err != nil || !equalValues(got30, got) {
		t.Errorf("wrapped /3/0: %v %v", got30, err)
	}
	// So is the pre-registration content format number.
	if gotOld, err := Decode(FormatTLVOld, InstancePath(3, 0), golden); err != nil || !equalValues(gotOld, got) {
		t.Errorf("cf 1542: %v", err)
	}
}

// TestTLVAccessControlGolden decodes the multi-instance Access Control
// object example of the LwM2M 1.0 TS (6.4.3.2), which has a 16-bit
// resource instance identifier (310).
func TestTLVAccessControlGolden(t *testing.T) {
	golden := unhex(t, `
		08 00 0E | C1 00 01 | C1 01 00 | 83 02 41 7F 07 | C1 03 7F
		08 02 12 | C1 00 03 | C1 01 00 | 87 02 41 7F 07 61 01 36 01 | C1 03 7F`)
	r := func(i, r int32) Path { return ResourcePath(2, i, r) }
	ri := func(i, r, x int32) Path { return ResourceInstancePath(2, i, r, x) }
	want := []Value{
		IntValue(r(0, 0), 1), IntValue(r(0, 1), 0), IntValue(ri(0, 2, 127), 7), IntValue(r(0, 3), 127),
		IntValue(r(2, 0), 3), IntValue(r(2, 1), 0), IntValue(ri(2, 2, 127), 7), IntValue(ri(2, 2, 310), 1), IntValue(r(2, 3), 127),
	}
	got, err := Decode(FormatTLV, ObjectPath(2), golden)
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "decode /2", interpret(t, got, kindsOf(want)), want)
	enc, err := EncodeTLV(want)
	if err != nil || !bytes.Equal(enc, golden) {
		t.Errorf("EncodeTLV = % X, %v\nwant % X", enc, err, golden)
	}
	// Reading /2/2 with the wrapper of instance 0 is a mismatch.
	if _, err := Decode(FormatTLV, InstancePath(2, 2), golden); err == nil {
		t.Error("instance mismatch accepted")
	} else {
		wantErr(t, "instance mismatch", err, ErrMalformed)
	}
}

func TestTLVRadioAndFirmwareReads(t *testing.T) {
	// Read /4/0: RSRP -95 (1 byte), cell ID 12345 (2 bytes), SINR 12.
	radio := unhex(t, "C1 02 A1 | C2 08 30 39 | C1 0B 0C")
	got, err := Decode(FormatTLV, InstancePath(4, 0), radio)
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "/4/0", interpret(t, got, kindsOf(radioValues())), radioValues())
	enc, _ := EncodeTLV(radioValues())
	if !bytes.Equal(enc, radio) {
		t.Errorf("encode /4/0 = % X", enc)
	}
	// A 28-bit LTE cell ID in 4 bytes, a positive (nonsense) RSRP, no SINR:
	// decoding reports what is there.
	got, err = Decode(FormatTLV, InstancePath(4, 0), unhex(t, "C1 02 05 | C4 08 0A BC DE F1"))
	if err != nil {
		t.Fatal(err)
	}
	if i, ok := IntAt(got, ResourcePath(4, 0, 8)); !ok || i != 0x0ABCDEF1 {
		t.Errorf("cell ID = %x %v", i, ok)
	}
	if i, ok := IntAt(got, ResourcePath(4, 0, 2)); !ok || i != 5 {
		t.Errorf("RSRP = %d %v", i, ok)
	}
	if _, ok := IntAt(got, ResourcePath(4, 0, 11)); ok {
		t.Error("SINR present")
	}

	// Single resource reads.
	for _, c := range []struct {
		path, hex string
		want      int64
	}{
		{"/5/0/3", "C1 03 02", 2},
		{"/5/0/5", "C1 05 01", 1},
		{"/4/0/8", "C2 08 30 39", 12345},
		{"/4/0/8", "C8 08 01 07", 7}, // non-minimal 8-bit length field
		{"/4/0/2", "C1 02 A1", -95},
	} {
		p := mustPath(t, c.path)
		got, err := Decode(FormatTLV, p, unhex(t, c.hex))
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		if i, ok := IntAt(got, p); !ok || i != c.want {
			t.Errorf("%s: IntAt = %d, %v; want %d", c.path, i, ok, c.want)
		}
	}
	fw, err := Decode(FormatTLV, ResourcePath(3, 0, 3), unhex(t, "C3 03 31 2E 30"))
	if s, ok := StringAt(fw, ResourcePath(3, 0, 3)); err != nil || !ok || s != "1.0" {
		t.Errorf("/3/0/3 = %q %v %v", s, ok, err)
	}
	// Not UTF-8: no string.
	bad, _ := Decode(FormatTLV, ResourcePath(3, 0, 3), unhex(t, "C2 03 C3 28"))
	if _, ok := StringAt(bad, ResourcePath(3, 0, 3)); ok {
		t.Error("StringAt accepted invalid UTF-8")
	}
}

func TestTLVIntegerSizes(t *testing.T) {
	for _, c := range []struct {
		hex  string
		want int64
	}{
		{"00", 0},
		{"7F", 127},
		{"80", -128},
		{"A1", -95},
		{"FF", -1},
		{"30 39", 12345},
		{"FC 18", -1000},
		{"80 00", -32768},
		{"00 00 00 05", 5},
		{"FF FE 79 60", -100000},
		{"7F FF FF FF", 2147483647},
		{"FF FF FF FE D5 FA 0E 00", -5000000000},
		{"7F FF FF FF FF FF FF FF", 9223372036854775807},
		{"80 00 00 00 00 00 00 00", -9223372036854775808},
	} {
		b := unhex(t, c.hex)
		v := Value{Path: ResourcePath(4, 0, 2), Bytes: b}
		if i, ok := IntAt([]Value{v}, v.Path); !ok || i != c.want {
			t.Errorf("%s: IntAt = %d, %v; want %d", c.hex, i, ok, c.want)
		}
		// Where the vector is the shortest form, the encoder writes it.
		if enc := tlvInt(c.want); len(enc) == len(b) && !bytes.Equal(enc, b) {
			t.Errorf("tlvInt(%d) = % X, want % X", c.want, enc, b)
		}
	}
	if enc := tlvInt(5); !bytes.Equal(enc, []byte{5}) {
		t.Errorf("tlvInt(5) = % X", enc)
	}
	for _, h := range []string{"", "01 02 03", "01 02 03 04 05", "00 00 00 00 00 00 00 00 00"} {
		v := Value{Path: ResourcePath(5, 0, 3), Bytes: unhex(t, h)}
		if i, ok := IntAt([]Value{v}, v.Path); ok {
			t.Errorf("IntAt of %d bytes = %d, want refusal", len(v.Bytes), i)
		}
	}
}

func TestTLVOtherTypes(t *testing.T) {
	p := ResourcePath(1, 0, 1)
	as := func(h string, k Kind) (Value, error) {
		return Value{Path: p, Bytes: unhex(t, h)}.As(k)
	}
	if v, err := as("40 49 0F DB", KindFloat); err != nil || float32(v.Float) != 3.1415927 {
		t.Errorf("float32: %v %v", v, err)
	}
	if v, err := as("40 09 21 FB 54 44 2D 18", KindFloat); err != nil || v.Float != 3.141592653589793 {
		t.Errorf("float64: %v %v", v, err)
	}
	if _, err := as("40 49 0F", KindFloat); err == nil {
		t.Error("3-byte float accepted")
	}
	if v, err := as("01", KindBoolean); err != nil || !v.Bool {
		t.Errorf("bool: %v %v", v, err)
	}
	if _, err := as("02", KindBoolean); err == nil {
		t.Error("boolean 2 accepted")
	}
	if v, err := as("00 03 00 01", KindObjlnk); err != nil || v.Str != "3:1" {
		t.Errorf("objlnk: %v %v", v, err)
	}
	if v, err := as("51 82 42 8F", KindTime); err != nil || v.Int != 1367491215 {
		t.Errorf("time: %v %v", v, err)
	}
	if oid, iid, ok := (Value{Bytes: []byte{0, 5, 0, 9}}).Objlnk(); !ok || oid != 5 || iid != 9 {
		t.Error("Value.Objlnk")
	}
}

func TestTLVLayouts(t *testing.T) {
	r6 := func(i int32) Path { return ResourceInstancePath(3, 0, 6, i) }
	multi := []Value{{Path: r6(0), Bytes: []byte{1}}, {Path: r6(1), Bytes: []byte{5}}}
	cases := []struct {
		path, hex string
		want      []Value
	}{
		{"/3/0/6", "86 06 41 00 01 41 01 05", multi},
		{"/3/0/6", "41 00 01 41 01 05", multi},                // bare resource instances
		{"/3/0/6", "08 00 08 86 06 41 00 01 41 01 05", multi}, // wrapped in the instance
		{"/3/0/6/1", "41 01 05", multi[1:]},
		{"/3/0/6/1", "83 06 41 01 05", multi[1:]},
		{"/3", "86 06 41 00 01 41 01 05", multi}, // bare resources at /o: instance 0
		{"/3/0", "", nil},
		{"/3", "08 00 00", nil}, // an empty instance
		{"/3/0", "80 06", nil},  // an empty multiple resource
		{"/3/0/3", "C0 03", []Value{{Path: ResourcePath(3, 0, 3), Bytes: []byte{}}}},
	}
	for _, c := range cases {
		got, err := Decode(FormatTLV, mustPath(t, c.path), unhex(t, c.hex))
		if err != nil {
			t.Errorf("%s % s: %v", c.path, c.hex, err)
			continue
		}
		checkValues(t, c.path+" "+c.hex, got, c.want)
	}

	// Identifiers and lengths in every size.
	long := make([]Value, 0)
	for _, n := range []int{0, 7, 8, 255, 256, 65535, 65536, 70000} {
		long = append(long, OpaqueValue(ResourcePath(19, 0, int32(n%65536)), bytes.Repeat([]byte{'x'}, n)))
	}
	long = append(long, OpaqueValue(ResourceInstancePath(19, 0, 300, 65535), []byte("y")))
	enc, err := EncodeTLV(long)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(FormatTLV, InstancePath(19, 0), enc)
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "sizes", interpret(t, got, kindsOf(long)), long)
	// 16-bit identifier 300 (01 2C) and 16-bit length 256 (01 00).
	h, _ := AppendTLV(nil, TLVResourceValue, 300, make([]byte, 256))
	if !bytes.Equal(h[:5], []byte{0xF0, 0x01, 0x2C, 0x01, 0x00}) {
		t.Errorf("16-bit id, 16-bit length header = % X", h[:5])
	}
	h, _ = AppendTLV(nil, TLVResourceValue, 1, make([]byte, 70000))
	if !bytes.Equal(h[:5], []byte{0xD8, 0x01, 0x01, 0x11, 0x70}) {
		t.Errorf("24-bit length header = % X", h[:5])
	}
	if _, err := AppendTLV(nil, TLVResourceValue, 1, make([]byte, MaxTLVLength+1)); err == nil {
		t.Error("overlong value accepted")
	}
}

func TestTLVMalformed(t *testing.T) {
	for _, c := range []struct {
		path, hex, why string
	}{
		{"/3/0", "C8", "truncated header"},
		{"/3/0", "C8 03", "truncated length"},
		{"/3/0", "E8 03", "truncated 16-bit id"},
		{"/3/0", "D8 03 00 00", "truncated 24-bit length"},
		{"/3/0", "C3 03 31 2E", "truncated value"},
		{"/3/0", "C8 03 FF 31", "length past the end"},
		{"/3/0", "C3 03 31 2E 30 C1", "trailing byte"},
		{"/3/0", "C3 03 31 2E 30 00", "trailing zero"},
		{"/3/0/3", "C3 04 31 2E 30", "resource id mismatch"},
		{"/3/0/6/1", "41 00 01", "resource instance id mismatch"},
		{"/3/0/6/1", "C1 06 01", "single resource where an instance is asked"},
		{"/3/1", "08 00 03 C1 00 01", "instance id mismatch"},
		{"/3/0", "41 00 01", "bare resource instance at an instance"},
		{"/3", "08 00 03 41 00 01", "resource instance inside an object instance"},
		{"/3", "08 00 03 08 01 00", "object instance inside an object instance"},
		{"/3/0", "83 06 C1 00 01", "resource inside a multiple resource"},
		{"/3/0", "85 06 83 06 41 00 01", "multiple resource inside a multiple resource"},
		{"/3/0", "82 06 41 00", "truncated resource instance"},
		{"/3/0", "08 00 05 C1 00 01", "instance length past its content"},
	} {
		_, err := Decode(FormatTLV, mustPath(t, c.path), unhex(t, c.hex))
		wantErr(t, c.why, err, ErrMalformed)
	}
	_, err := Decode(FormatTLV, RootPath, []byte{0xC1, 0, 1})
	wantErr(t, "root path", err, ErrInvalidPath)
	_, err = Decode(FormatTLV, Path{3, -1, 0, -1}, nil)
	wantErr(t, "invalid path", err, ErrInvalidPath)
	_, err = EncodeTLV([]Value{IntValue(ResourcePath(3, 0, 0), 1), IntValue(ResourcePath(4, 0, 0), 1)})
	wantErr(t, "two objects", err, ErrInvalidValue)
	_, err = EncodeTLVFor(InstancePath(3, 0), []Value{IntValue(ResourcePath(3, 1, 0), 1)})
	wantErr(t, "outside the request path", err, ErrInvalidPath)
	_, err = EncodeTLV([]Value{IntValue(InstancePath(3, 0), 1)})
	wantErr(t, "not a leaf", err, ErrInvalidPath)
	_, err = EncodeTLV([]Value{{Path: ResourcePath(3, 0, 0), Kind: KindObjlnk, Str: "x"}})
	wantErr(t, "bad objlnk", err, ErrInvalidValue)
}

func TestTLVRoundTripAllKinds(t *testing.T) {
	vs := allKinds()
	for _, req := range []Path{ObjectPath(3442), InstancePath(3442, 0)} {
		enc, err := EncodeTLVFor(req, vs)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(FormatTLV, req, enc)
		if err != nil {
			t.Fatal(err)
		}
		checkValues(t, "round trip "+req.String(), interpret(t, got, kindsOf(vs)), vs)
	}
	// Several instances come out wrapped, and read back at /o.
	two := []Value{IntValue(ResourcePath(5, 0, 3), 1), IntValue(ResourcePath(5, 1, 3), 2), IntValue(ResourcePath(5, 0, 5), 8)}
	enc, err := EncodeTLV(two)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, unhex(t, "03 00 C1 03 01 | 03 01 C1 03 02 | 03 00 C1 05 08")) {
		t.Errorf("two instances: % X", enc)
	}
	got, err := Decode(FormatTLV, ObjectPath(5), enc)
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "two instances", interpret(t, got, kindsOf(two)), two)
	// A resource instance request encodes bare resource instances.
	ri := []Value{IntValue(ResourceInstancePath(3, 0, 6, 1), 5)}
	enc, _ = EncodeTLVFor(ri[0].Path, ri)
	if !bytes.Equal(enc, unhex(t, "41 01 05")) {
		t.Errorf("resource instance: % X", enc)
	}
	if enc, err := EncodeTLV(nil); err != nil || len(enc) != 0 {
		t.Errorf("EncodeTLV(nil) = %v %v", enc, err)
	}
}
