package lwm2mcodec

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

// deviceSenMLJSON is the Read /3/0 example of LwM2M 1.1 Core 7.4.4 in
// SenML JSON (the same data as the 1.0 TLV example).
const deviceSenMLJSON = `[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},
{"n":"1","vs":"Lightweight M2M Client"},
{"n":"2","vs":"345000123"},
{"n":"3","vs":"1.0"},
{"n":"6/0","v":1},
{"n":"6/1","v":5},
{"n":"7/0","v":3800},
{"n":"7/1","v":5000},
{"n":"8/0","v":125},
{"n":"8/1","v":900},
{"n":"9","v":100},
{"n":"10","v":15},
{"n":"11/0","v":0},
{"n":"13","v":1367491215},
{"n":"14","vs":"+02:00"},
{"n":"16","vs":"U"}]`

func TestSenMLJSONDeviceObject(t *testing.T) {
	got, err := Decode(FormatSenMLJSON, InstancePath(3, 0), []byte(deviceSenMLJSON))
	if err != nil {
		t.Fatal(err)
	}
	want := deviceObject()
	// SenML has no time type: resource 13 reads as an integer.
	checkValues(t, "decode", interpret(t, got, kindsOf(want)), want)
	if got[13].Kind != KindInteger {
		t.Errorf("time decoded as %s", got[13].Kind)
	}
	if s, ok := StringAt(got, ResourcePath(3, 0, 3)); !ok || s != "1.0" {
		t.Errorf("StringAt = %q %v", s, ok)
	}
	enc, err := EncodeSenMLJSON(want)
	if err != nil {
		t.Fatal(err)
	}
	if string(enc) != strings.ReplaceAll(deviceSenMLJSON, "\n", "") {
		t.Errorf("EncodeSenMLJSON:\n got  %s\n want %s", enc, deviceSenMLJSON)
	}
}

func TestSenMLJSONReads(t *testing.T) {
	fw := ResourcePath(3, 0, 3)
	for _, s := range []string{
		`[{"bn":"/3/0/","n":"3","vs":"1.0"}]`,
		`[{"bn":"/3/0/3","vs":"1.0"}]`,
		`[{"n":"/3/0/3","vs":"1.0"}]`,
		`[{"vs":"1.0"}]`,        // no name: the request path
		`[{"n":"","vs":"1.0"}]`, // the same
		` [ { "vs" : "1.0" , "t" : 0 , "u" : "x" , "ext" : [1, {"a": null}] } ] `,
		`[{"bn":"/3/0/","bt":1.7e9,"n":"3","vs":"1.0"}]`,
		`[{"bn":"/3/0/","n":"3"},{"n":"3","vs":"1.0"}]`, // a record without a value is skipped
	} {
		got, err := Decode(FormatSenMLJSON, fw, []byte(s))
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		checkValues(t, s, got, []Value{StringValue(fw, "1.0")})
	}

	radio := `[{"bn":"/4/0/","n":"2","v":-95},{"n":"8","v":12345},{"n":"11","v":12}]`
	got, err := Decode(FormatSenMLJSON, InstancePath(4, 0), []byte(radio))
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "radio", got, radioValues())
	if enc, _ := EncodeSenMLJSON(radioValues()); string(enc) != radio {
		t.Errorf("encode radio = %s", enc)
	}
	// Relative names without a base name resolve against the request path.
	got, _ = Decode(FormatSenMLJSON, InstancePath(4, 0), []byte(`[{"n":"2","v":-95.0},{"n":"11","v":12.5},{"n":"8","v":1.2345e4}]`))
	if i, ok := IntAt(got, ResourcePath(4, 0, 2)); !ok || i != -95 {
		t.Errorf("RSRP -95.0 = %d %v", i, ok)
	}
	if _, ok := IntAt(got, ResourcePath(4, 0, 11)); ok {
		t.Error("IntAt accepted 12.5")
	}
	if i, ok := IntAt(got, ResourcePath(4, 0, 8)); !ok || i != 12345 {
		t.Errorf("cell ID 1.2345e4 = %d %v", i, ok)
	}
	// State and result as integers.
	got, _ = Decode(FormatSenMLJSON, ObjectPath(5), []byte(`[{"bn":"/5/0/","n":"3","v":3},{"n":"5","v":1}]`))
	if s, ok := IntAt(got, ResourcePath(5, 0, 3)); !ok || s != 3 {
		t.Error("state")
	}
	if r, ok := IntAt(got, ResourcePath(5, 0, 5)); !ok || r != 1 {
		t.Error("result")
	}
	// The base name persists and can change; base value adds to v; the
	// last record of a path wins (time series).
	got, err = Decode(FormatSenMLJSON, RootPath, []byte(`[
		{"bn":"/4/0/","bv":-100,"n":"2","v":5},
		{"n":"2","v":10,"t":1},
		{"bn":"/5/0/","n":"3","v":-98,"bv":100},
		{"n":"1","vb":true},{"n":"0","vd":"AAEC_w"},{"n":"0/1","vd":"AAEC/w=="},{"n":"6","vlo":"03:007"}]`))
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "base fields", got, []Value{
		IntValue(ResourcePath(4, 0, 2), -95),
		IntValue(ResourcePath(4, 0, 2), -90),
		IntValue(ResourcePath(5, 0, 3), 2),
		BoolValue(ResourcePath(5, 0, 1), true),
		OpaqueValue(ResourcePath(5, 0, 0), []byte{0, 1, 2, 0xff}),
		OpaqueValue(ResourceInstancePath(5, 0, 0, 1), []byte{0, 1, 2, 0xff}),
		ObjlnkValue(ResourcePath(5, 0, 6), 3, 7),
	})
	if i, _ := IntAt(got, ResourcePath(4, 0, 2)); i != -90 {
		t.Errorf("last of a time series = %d", i)
	}
	// Huge integers become floats.
	got, _ = Decode(FormatSenMLJSON, fw, []byte(`[{"v":18446744073709551615}]`))
	if len(got) != 1 || got[0].Kind != KindFloat {
		t.Errorf("uint64 max: %v", got)
	}
}

func TestSenMLJSONMalformed(t *testing.T) {
	p := InstancePath(3, 0)
	for _, s := range []string{
		``, `{}`, `null`, `[null]`, `[1]`, `[[]]`, `[{"n":"3","vs":"1.0"}`, `[{"n":"3","vs":"1.0"}]x`,
		`[{"n":"3","vs":"1.0"}][]`,
		`[{"n":"3","vs":"1.0","v":1}]`,          // two values
		`[{"n":"3","vs":"1.0","vs":"2.0"}]`,     // repeated label
		`[{"n":3,"vs":"1.0"}]`,                  // name not a string
		`[{"bn":1,"n":"3","vs":"1.0"}]`,         // base name not a string
		`[{"n":"3","v":"1"}]`,                   // number as a string
		`[{"n":"3","vs":1}]`,                    // string as a number
		`[{"n":"3","vb":1}]`,                    // boolean as a number
		`[{"n":"3","vd":"***"}]`,                // not base64
		`[{"n":"3","vd":1}]`,                    // data not a string
		`[{"n":"3","vlo":"3"}]`,                 // objlnk without ':'
		`[{"n":"3","vlo":"3:70000"}]`,           // objlnk out of range
		`[{"n":"3","v":1e999}]`,                 // out of range
		`[{"n":"3","v":1,"foo_":1}]`,            // must-understand label
		`[{"bn":"/3/0","n":"3","vs":"1.0"}]`,    // "/3/03": leading zero
		`[{"bn":"/3/0/","n":"3/x","vs":"1.0"}]`, // not numeric
		`[{"n":"/3/0","vs":"1.0"}]`,             // not a resource
		`[{"n":"/3/0/3/4/5","vs":"1.0"}]`,       // too deep
		`[{"n":"/3/0/3","vs":"1.0",}]`,
		`[{"bn":"/4/0/","bv":1e308,"n":"2","v":1e308}]`, // sum overflows
	} {
		_, err := Decode(FormatSenMLJSON, p, []byte(s))
		wantErr(t, s, err, ErrMalformed)
	}
	// No name and a request path that is not a resource.
	_, err := Decode(FormatSenMLJSON, p, []byte(`[{"vs":"1.0"}]`))
	wantErr(t, "no name", err, ErrMalformed)
	_, err = EncodeSenMLJSON([]Value{FloatValue(ResourcePath(3, 0, 1), math.NaN())})
	wantErr(t, "NaN", err, ErrInvalidValue)
	_, err = EncodeSenMLJSON([]Value{{Path: ResourcePath(3, 0, 1), Bytes: []byte{1}}})
	wantErr(t, "unknown kind", err, ErrInvalidValue)
	_, err = EncodeSenMLJSON([]Value{StringValue(ResourcePath(3, 0, 1), "\xff")})
	wantErr(t, "not UTF-8", err, ErrInvalidValue)
}

// CBOR vectors, assembled by hand from RFC 8949 and RFC 8428 table 6
// (bn -2 = 0x21, n 0 = 0x00, v 2 = 0x02, vs 3 = 0x03, vb 4, vd 8).
const (
	// [{-2: "/3/0/", 0: "3", 3: "1.0"}]
	cborFirmware = `81 A3 | 21 65 2F 33 2F 30 2F | 00 61 33 | 03 63 31 2E 30`
	// [{-2: "/4/0/", 0: "2", 2: -95}, {0: "8", 2: 12345}, {0: "11", 2: 12}]
	cborRadio = `83
		A3 | 21 65 2F 34 2F 30 2F | 00 61 32 | 02 38 5E
		A2 | 00 61 38 | 02 19 30 39
		A2 | 00 62 31 31 | 02 0C`
)

func TestSenMLCBORGolden(t *testing.T) {
	fw := ResourcePath(3, 0, 3)
	got, err := Decode(FormatSenMLCBOR, fw, unhex(t, cborFirmware))
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "firmware", got, []Value{StringValue(fw, "1.0")})
	if enc, _ := EncodeSenMLCBOR(got); !bytes.Equal(enc, unhex(t, cborFirmware)) {
		t.Errorf("encode firmware = % X", enc)
	}
	got, err = Decode(FormatSenMLCBOR, InstancePath(4, 0), unhex(t, cborRadio))
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "radio", got, radioValues())
	if enc, _ := EncodeSenMLCBOR(radioValues()); !bytes.Equal(enc, unhex(t, cborRadio)) {
		t.Errorf("encode radio = % X", enc)
	}
	for _, c := range []struct{ name, hex string }{
		{"base name only", `81 A2 21 66 2F 33 2F 30 2F 33 03 63 31 2E 30`},
		{"no name", `81 A1 03 63 31 2E 30`},
		{"indefinite array, map and text", `9F BF 21 7F 64 2F 33 2F 30 61 2F FF 00 61 33 03 63 31 2E 30 FF FF`},
		{"labels out of order, 2-byte label encoding", `81 A3 18 03 63 31 2E 30 00 61 33 38 01 65 2F 33 2F 30 2F`},
		{"text label bn", `81 A2 62 62 6E 66 2F 33 2F 30 2F 33 03 63 31 2E 30`},
		{"ignored labels: bt, t, u, unknown int, unknown text, tag", `81 A7 22 1A 65 00 00 00 06 00 01 61 56 18 63 F6 63 66 6F 6F 80 21 C0 66 2F 33 2F 30 2F 33 03 63 31 2E 30`},
	} {
		got, err := Decode(FormatSenMLCBOR, fw, unhex(t, c.hex))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		checkValues(t, c.name, got, []Value{StringValue(fw, "1.0")})
	}

	// Numbers in every CBOR form, and the other value labels.
	got, err = Decode(FormatSenMLCBOR, InstancePath(4, 0), unhex(t, `88
		A3 21 65 2F 34 2F 30 2F 00 61 32 02 F9 D5 EF
		A2 00 62 31 31 02 F9 4A 00
		A2 00 61 38 02 FA 46 40 E4 00
		A2 00 61 37 02 FB 40 09 21 FB 54 44 2D 18
		A2 00 61 31 04 F5
		A2 00 61 30 08 44 00 01 02 FF
		A2 00 61 36 63 76 6C 6F 63 33 3A 30
		A2 00 63 39 2F 30 02 1B 00 00 00 01 2A 05 F2 00`))
	if err != nil {
		t.Fatal(err)
	}
	p := func(r int32) Path { return ResourcePath(4, 0, r) }
	checkValues(t, "numbers", got, []Value{
		FloatValue(p(2), -94.9375),
		FloatValue(p(11), 12),
		FloatValue(p(8), 12345),
		FloatValue(p(7), math.Pi),
		BoolValue(p(1), true),
		OpaqueValue(p(0), []byte{0, 1, 2, 0xff}),
		ObjlnkValue(p(6), 3, 0),
		IntValue(ResourceInstancePath(4, 0, 9, 0), 5000000000),
	})
	if i, ok := IntAt(got, p(11)); !ok || i != 12 {
		t.Errorf("half-float 12.0 as integer = %d %v", i, ok)
	}
	if i, ok := IntAt(got, p(8)); !ok || i != 12345 {
		t.Errorf("single-float 12345.0 as integer = %d %v", i, ok)
	}
	if _, ok := IntAt(got, p(2)); ok {
		t.Error("IntAt accepted -94.9375")
	}
	// Big unsigned and negative integers.
	got, err = Decode(FormatSenMLCBOR, ResourcePath(4, 0, 8), unhex(t, `82 A1 02 3B 7F FF FF FF FF FF FF FF A1 02 1B FF FF FF FF FF FF FF FF`))
	if err != nil || len(got) != 2 || got[0].Kind != KindInteger || got[0].Int != math.MinInt64 || got[1].Kind != KindFloat {
		t.Errorf("extreme integers: %v %v", got, err)
	}
}

func TestFloat16(t *testing.T) {
	for _, c := range []struct {
		h    uint16
		want float64
	}{
		{0x0000, 0}, {0x3C00, 1}, {0xC000, -2}, {0x7BFF, 65504}, {0x0001, 5.960464477539063e-8},
		{0x0400, 6.103515625e-05}, {0x7C00, math.Inf(1)}, {0xFC00, math.Inf(-1)}, {0x4A00, 12}, {0xD5EF, -94.9375},
	} {
		if got := float16(c.h); got != c.want {
			t.Errorf("float16(%04x) = %v, want %v", c.h, got, c.want)
		}
	}
	if !math.IsNaN(float16(0x7E00)) {
		t.Error("NaN")
	}
}

func TestSenMLCBORMalformed(t *testing.T) {
	p := ResourcePath(3, 0, 3)
	for _, c := range []struct{ why, hex string }{
		{"empty", ``},
		{"not an array", `A1 03 63 31 2E 30`},
		{"record not a map", `81 03`},
		{"truncated", `81 A3 21 65 2F 33 2F 30 2F 00 61 33 03 63 31 2E`},
		{"trailing byte", `81 A1 03 63 31 2E 30 00`},
		{"two values", `81 A2 03 63 31 2E 30 02 01`},
		{"repeated label", `81 A2 03 63 31 2E 30 03 63 31 2E 30`},
		{"repeated label, text and int", `81 A3 21 61 2F 62 62 6E 61 2F 03 61 31`},
		{"must-understand label", `81 A2 03 63 31 2E 30 64 66 6F 6F 5F 01`},
		{"label neither int nor text", `81 A1 F5 01`},
		{"vs not text", `81 A1 03 01`},
		{"vd as text", `81 A1 08 61 41`},
		{"v as text", `81 A1 02 61 31`},
		{"vb as int", `81 A1 04 01`},
		{"vlo invalid", `81 A1 63 76 6C 6F 61 33`},
		{"text not UTF-8", `81 A1 03 62 C3 28`},
		{"reserved additional information", `81 A1 03 7C`},
		{"huge array length", `9B FF FF FF FF FF FF FF FF`},
		{"huge map length", `81 BA 7F FF FF FF`},
		{"huge string length", `81 A1 03 7B 00 00 00 01 00 00 00 00`},
		{"indefinite integer", `81 A1 03 1F`},
		{"indefinite tag", `81 A1 03 DF`},
		{"break outside indefinite", `81 FF`},
		{"bad chunk", `81 A1 03 7F 41 00 FF`},
		{"indefinite map, odd items", `81 BF 03 FF`},
		{"unterminated indefinite array", `9F A1 03 61 31`},
		{"simple value < 32 in two bytes", `81 A1 03 F8 10`},
		{"deep nesting", strings.Repeat("81 ", 40) + "00"},
		{"deep tags", `81 A1 05 ` + strings.Repeat("C1 ", 40) + "00"},
		{"name not a resource", `81 A2 00 64 2F 33 2F 30 03 61 31`},
		{"null value", `81 A1 03 F6`},
	} {
		_, err := Decode(FormatSenMLCBOR, p, unhex(t, c.hex))
		wantErr(t, c.why, err, ErrMalformed)
	}
}

func TestSenMLRoundTripAllKinds(t *testing.T) {
	vs := allKinds()
	// SenML has no time type: times read back as integers.
	want := append([]Value(nil), vs...)
	for i := range want {
		if want[i].Kind == KindTime {
			want[i].Kind = KindInteger
		}
	}
	for _, c := range []struct {
		cf  uint16
		enc func([]Value) ([]byte, error)
	}{{FormatSenMLJSON, EncodeSenMLJSON}, {FormatSenMLCBOR, EncodeSenMLCBOR}} {
		enc, err := c.enc(vs)
		if err != nil {
			t.Fatal(err)
		}
		for _, req := range []Path{RootPath, InstancePath(3442, 0), ResourcePath(1, 2, 3)} {
			got, err := Decode(c.cf, req, enc)
			if err != nil {
				t.Fatalf("cf %d: %v\n%q", c.cf, err, enc)
			}
			checkValues(t, "round trip", got, want)
		}
		// Values of several objects share one base name "/".
		mixed := []Value{StringValue(ResourcePath(3, 0, 3), "1.0"), IntValue(ResourcePath(5, 0, 3), 1)}
		enc, _ = c.enc(mixed)
		if got, err := Decode(c.cf, RootPath, enc); err != nil || !equalValues(got, mixed) {
			t.Errorf("mixed objects: %v %v", got, err)
		}
		// One value at /3/0/6/0 next to /3/0/6: the base stays above both.
		nested := []Value{IntValue(ResourcePath(3, 0, 6), 1), IntValue(ResourceInstancePath(3, 0, 6, 0), 2)}
		enc, _ = c.enc(nested)
		if got, err := Decode(c.cf, RootPath, enc); err != nil || !equalValues(got, nested) {
			t.Errorf("nested: %v %v", got, err)
		}
		if enc, err := c.enc(nil); err != nil {
			t.Errorf("empty: %v", err)
		} else if got, err := Decode(c.cf, RootPath, enc); err != nil || len(got) != 0 {
			t.Errorf("empty: %v %v", got, err)
		}
	}
	// CBOR carries NaN and infinities.
	special := []Value{FloatValue(ResourcePath(1, 0, 0), math.NaN()), FloatValue(ResourcePath(1, 0, 1), math.Inf(-1))}
	enc, err := EncodeSenMLCBOR(special)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Decode(FormatSenMLCBOR, RootPath, enc); err != nil || !equalValues(got, special) {
		t.Errorf("NaN/Inf: %v %v", got, err)
	}
}
