package lwm2mcodec

import (
	"math"
	"reflect"
	"testing"
)

// Every decoder is fuzzed: nothing panics, and whatever decodes re-encodes
// (in the same format, and where the format allows in the others) to bytes
// that decode to the same values. Run one with, e.g.,
//
//	go test ./transport/lwm2m/lwm2mcodec -run '^$' -fuzz FuzzDecodeTLV -fuzztime 15s -fuzzminimizetime 500x
//
// (-fuzzminimizetime bounds minimization, which otherwise can stall:
// golang/go#48820).

// fuzzPaths are the request paths a fuzz input's selector byte picks from.
var fuzzPaths = []Path{
	ObjectPath(3), InstancePath(3, 0), ResourcePath(3, 0, 6), ResourceInstancePath(3, 0, 6, 1),
	ResourcePath(4, 0, 2), RootPath, InstancePath(4, 0), ObjectPath(2),
}

func fuzzPath(sel uint8) Path { return fuzzPaths[int(sel)%len(fuzzPaths)] }

// exercise runs the interpreting helpers over decoded values (they must not
// panic whatever the bytes).
func exercise(vs []Value) {
	for _, v := range vs {
		for k := KindUnknown; k <= KindObjlnk+1; k++ {
			_, _ = v.As(k)
		}
		_, _ = EncodeText(v)
		_, _, _ = v.Objlnk()
		_ = v.String()
		StringAt(vs, v.Path)
		IntAt(vs, v.Path)
	}
}

func finite(vs []Value) bool {
	for _, v := range vs {
		if v.Kind == KindFloat && (math.IsNaN(v.Float) || math.IsInf(v.Float, 0)) {
			return false
		}
	}
	return true
}

// reencode encodes vs with enc and decodes the result in format cf at req,
// requiring the same values back.
func reencode(t *testing.T, name string, vs []Value, cf uint16, req Path, enc func([]Value) ([]byte, error)) {
	t.Helper()
	b, err := enc(vs)
	if err != nil {
		t.Fatalf("%s: re-encoding %v: %v", name, vs, err)
	}
	got, err := Decode(cf, req, b)
	if err != nil {
		t.Fatalf("%s: decoding re-encoded %q: %v\nvalues %v", name, b, err, vs)
	}
	if !equalValues(got, vs) {
		t.Fatalf("%s: round trip changed values\n in  %v\n out %v\n via %q", name, vs, got, b)
	}
}

func FuzzDecodeTLV(f *testing.F) {
	f.Add(unhex(f, deviceTLV), uint8(1))
	f.Add(append(unhex(f, "08 00 79"), unhex(f, deviceTLV)...), uint8(0))
	f.Add(unhex(f, "08 00 0E C1 00 01 C1 01 00 83 02 41 7F 07 C1 03 7F 08 02 12 C1 00 03 C1 01 00 87 02 41 7F 07 61 01 36 01 C1 03 7F"), uint8(7))
	f.Add(unhex(f, "C1 02 A1 C2 08 30 39 C1 0B 0C"), uint8(6))
	f.Add(unhex(f, "86 06 41 00 01 41 01 05"), uint8(2))
	f.Add(unhex(f, "41 01 05"), uint8(3))
	f.Add(unhex(f, "C1 02 A1"), uint8(4))
	f.Add(unhex(f, "F0 01 2C 00 08 C8 00"), uint8(1))
	f.Add([]byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, sel uint8) {
		req := fuzzPath(sel)
		vs, err := Decode(FormatTLV, req, data)
		if err != nil {
			return
		}
		exercise(vs)
		for _, v := range vs {
			if v.Kind != KindUnknown || !req.Contains(v.Path) || !v.Path.IsLeaf() {
				t.Fatalf("decoded %v at %s", v, req)
			}
		}
		reencode(t, "TLV for request", vs, FormatTLV, req, func(vs []Value) ([]byte, error) { return EncodeTLVFor(req, vs) })
		if len(vs) > 0 {
			// EncodeTLV picks the common level; decode at it.
			common := InstancePath(vs[0].Path.Object, vs[0].Path.Instance)
			for _, v := range vs {
				if v.Path.Instance != common.Instance {
					common = ObjectPath(common.Object)
				}
			}
			reencode(t, "TLV", vs, FormatTLV, common, EncodeTLV)
		}
	})
}

func FuzzDecodeSenMLJSON(f *testing.F) {
	f.Add([]byte(deviceSenMLJSON), uint8(1))
	f.Add([]byte(`[{"bn":"/3/0/3","vs":"1.0"}]`), uint8(4))
	f.Add([]byte(`[{"bn":"/4/0/","n":"2","v":-95},{"n":"8","v":12345},{"n":"11","v":12}]`), uint8(6))
	f.Add([]byte(`[{"bn":"/4/0/","bv":-100,"n":"2","v":5},{"n":"1","vb":true},{"n":"0","vd":"AAEC_w"},{"n":"6","vlo":"3:7"},{"n":"7","v":1.5e-7}]`), uint8(5))
	f.Add([]byte(`[{"n":"2","v":-95.0}]`), uint8(6))
	f.Add([]byte(`[]`), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, sel uint8) {
		vs, err := Decode(FormatSenMLJSON, fuzzPath(sel), data)
		if err != nil {
			return
		}
		exercise(vs)
		reencode(t, "SenML JSON", vs, FormatSenMLJSON, RootPath, EncodeSenMLJSON)
		reencode(t, "SenML JSON as CBOR", vs, FormatSenMLCBOR, RootPath, EncodeSenMLCBOR)
	})
}

func FuzzDecodeSenMLCBOR(f *testing.F) {
	f.Add(unhex(f, cborFirmware), uint8(4))
	f.Add(unhex(f, cborRadio), uint8(6))
	f.Add(unhex(f, `9F BF 21 7F 64 2F 33 2F 30 61 2F FF 00 61 33 03 63 31 2E 30 FF FF`), uint8(1))
	f.Add(unhex(f, `88 A3 21 65 2F 34 2F 30 2F 00 61 32 02 F9 D5 EF A2 00 62 31 31 02 F9 4A 00 A2 00 61 38 02 FA 46 40 E4 00
		A2 00 61 37 02 FB 40 09 21 FB 54 44 2D 18 A2 00 61 31 04 F5 A2 00 61 30 08 44 00 01 02 FF
		A2 00 61 36 63 76 6C 6F 63 33 3A 30 A2 00 63 39 2F 30 02 1B 00 00 00 01 2A 05 F2 00`), uint8(6))
	f.Add(unhex(f, `81 A7 22 1A 65 00 00 00 06 00 01 61 56 18 63 F6 63 66 6F 6F 80 21 C0 66 2F 33 2F 30 2F 33 03 63 31 2E 30`), uint8(5))
	f.Add(unhex(f, `81 A2 25 01 02 3B 7F FF FF FF FF FF FF FF`), uint8(4))
	f.Fuzz(func(t *testing.T, data []byte, sel uint8) {
		vs, err := Decode(FormatSenMLCBOR, fuzzPath(sel), data)
		if err != nil {
			return
		}
		exercise(vs)
		reencode(t, "SenML CBOR", vs, FormatSenMLCBOR, RootPath, EncodeSenMLCBOR)
		if finite(vs) {
			reencode(t, "SenML CBOR as JSON", vs, FormatSenMLJSON, RootPath, EncodeSenMLJSON)
		}
	})
}

func FuzzDecodeLwM2MJSON(f *testing.F) {
	f.Add([]byte(deviceLwM2MJSON), uint8(1))
	f.Add([]byte(`{"bn":"/4/0/","e":[{"n":"2","v":-95},{"n":"8","v":12345},{"n":"11","v":12}]}`), uint8(6))
	f.Add([]byte(`{"e":[{"n":"2","v":-95.0},{"n":"0","bv":true},{"n":"1","ov":"4:0"}]}`), uint8(6))
	f.Add([]byte(`{"e":[{"sv":"1.0","t":5}],"bt":17}`), uint8(4))
	f.Fuzz(func(t *testing.T, data []byte, sel uint8) {
		vs, err := Decode(FormatLwM2MJSON, fuzzPath(sel), data)
		if err != nil {
			return
		}
		exercise(vs)
		reencode(t, "LwM2M JSON", vs, FormatLwM2MJSON, RootPath, EncodeLwM2MJSON)
		reencode(t, "LwM2M JSON as SenML JSON", vs, FormatSenMLJSON, RootPath, EncodeSenMLJSON)
	})
}

func FuzzParseLinkFormat(f *testing.F) {
	f.Add(`</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</4/0>,</5/0>,</19/0>,</19/1>`)
	f.Add(`</lwm2m>;rt="oma.lwm2m",</lwm2m/3/0>`)
	f.Add(`</5>;ver=1.1`)
	f.Add(` </1/0> , </3/0> ;  ver = 1.0 ;obs,` + "\n\t" + `</5>`)
	f.Add(`</a>;title="x, y; z=\"q\" \\ end",</b>;e=""`)
	f.Add(`</>;rt="oma.lwm2m";ct="60 110 112 11543",</3/0/6>;dim=2`)
	f.Fuzz(func(t *testing.T, s string) {
		links, err := ParseLinkFormat(s)
		if err != nil {
			return
		}
		_, _, _ = Objects(links)
		_, _ = ContentFormats(links)
		out := FormatLinks(links)
		again, err := ParseLinkFormat(out)
		if err != nil {
			t.Fatalf("%q formatted as %q, which does not parse: %v", s, out, err)
		}
		if !reflect.DeepEqual(again, links) {
			t.Fatalf("%q: %v formatted as %q reads back as %v", s, links, out, again)
		}
		if out2 := FormatLinks(again); out2 != out {
			t.Fatalf("formatting is not stable: %q then %q", out, out2)
		}
	})
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/", "/3", "/3/0", "/3/0/3", "/3/0/6/1", "/65535/0/0/65535", "/03", "/3/", "//", "/65536"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePath(s)
		if err != nil {
			return
		}
		if !p.Valid() {
			t.Fatalf("ParsePath(%q) = invalid %#v", s, p)
		}
		if p.String() != s {
			t.Fatalf("ParsePath(%q).String() = %q", s, p.String())
		}
	})
}
