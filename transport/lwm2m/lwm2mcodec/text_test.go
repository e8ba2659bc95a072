package lwm2mcodec

import (
	"bytes"
	"math"
	"testing"
)

func TestTextReads(t *testing.T) {
	fw := ResourcePath(3, 0, 3)
	got, err := Decode(FormatText, fw, []byte("1.0"))
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "firmware", got, []Value{StringValue(fw, "1.0")})
	if s, ok := StringAt(got, fw); !ok || s != "1.0" {
		t.Errorf("StringAt = %q %v", s, ok)
	}
	// Text is returned as sent.
	got, _ = Decode(FormatText, fw, []byte(" v2.1\n"))
	if s, _ := StringAt(got, fw); s != " v2.1\n" {
		t.Errorf("StringAt trimmed: %q", s)
	}

	rsrp := ResourcePath(4, 0, 2)
	for _, c := range []struct {
		text string
		want int64
		ok   bool
	}{
		{"-95", -95, true},
		{"\u221295", -95, true}, // U+2212 MINUS SIGN
		{" 12\r\n", 12, true},
		{"+5", 5, true}, // a positive "dBm": reported as is
		{"-95.0", -95, true},
		{"1e3", 1000, true},
		{"12345", 12345, true},
		{"9223372036854775807", math.MaxInt64, true},
		{"-95.5", 0, false},
		{"9223372036854775808", 0, false},
		{"", 0, false},
		{"abc", 0, false},
		{"0x10", 0, false},
		{"NaN", 0, false},
		{"Inf", 0, false},
		{"1_000", 0, false},
		{"- 95", 0, false},
	} {
		got, err := Decode(FormatText, rsrp, []byte(c.text))
		if err != nil {
			t.Fatal(err)
		}
		i, ok := IntAt(got, rsrp)
		if ok != c.ok || i != c.want {
			t.Errorf("IntAt(%q) = %d, %v; want %d, %v", c.text, i, ok, c.want, c.ok)
		}
	}

	_, err = Decode(FormatText, fw, []byte{0xff})
	wantErr(t, "text not UTF-8", err, ErrMalformed)
	_, err = Decode(FormatText, InstancePath(3, 0), []byte("1"))
	wantErr(t, "text at an instance", err, ErrInvalidPath)
	_, err = Decode(FormatOpaque, InstancePath(3, 0), []byte("1"))
	wantErr(t, "opaque at an instance", err, ErrInvalidPath)
	_, err = Decode(FormatLink, fw, []byte("</3/0>"))
	wantErr(t, "link format", err, ErrUnsupportedFormat)
	_, err = Decode(60, fw, []byte{0x01})
	wantErr(t, "plain CBOR", err, ErrUnsupportedFormat)
	_, err = Decode(FormatText, Path{3, -1, 3, -1}, []byte("1"))
	wantErr(t, "invalid path", err, ErrInvalidPath)

	// Opaque: raw bytes, copied.
	payload := []byte{0xff, 0xfe, 0x01}
	got, err = Decode(FormatOpaque, ResourcePath(19, 0, 0), payload)
	if err != nil {
		t.Fatal(err)
	}
	payload[0] = 0
	checkValues(t, "opaque", got, []Value{OpaqueValue(ResourcePath(19, 0, 0), []byte{0xff, 0xfe, 0x01})})
	if _, ok := IntAt(got, ResourcePath(19, 0, 0)); ok {
		t.Error("IntAt of opaque succeeded")
	}
	// A firmware version answered as opaque still reads as a string.
	got, _ = Decode(FormatOpaque, fw, []byte("1.0"))
	if s, ok := StringAt(got, fw); !ok || s != "1.0" {
		t.Errorf("StringAt opaque = %q %v", s, ok)
	}
}

func TestTextRoundTripAllKinds(t *testing.T) {
	for _, v := range allKinds() {
		enc, err := EncodeText(v)
		if err != nil {
			t.Fatalf("%v: %v", v, err)
		}
		got, err := Decode(FormatText, v.Path, enc)
		if err != nil {
			t.Fatalf("%v: %v", v, err)
		}
		checkValues(t, "text "+string(enc), interpret(t, got, []Kind{v.Kind}), []Value{v})
	}
	for _, c := range []struct {
		v    Value
		want string
	}{
		{BoolValue(RootPath, true), "1"},
		{BoolValue(RootPath, false), "0"},
		{FloatValue(RootPath, 1e21), "1000000000000000000000"},
		{FloatValue(RootPath, -0.5), "-0.5"},
		{IntValue(RootPath, -95), "-95"},
		{OpaqueValue(RootPath, []byte{0xfb, 0xff}), "+/8="},
		{ObjlnkValue(RootPath, 3, 0), "3:0"},
	} {
		if enc, err := EncodeText(c.v); err != nil || !bytes.Equal(enc, []byte(c.want)) {
			t.Errorf("EncodeText(%v) = %q, %v; want %q", c.v, enc, err, c.want)
		}
	}
	for _, v := range []Value{
		{Kind: KindUnknown, Bytes: []byte{1}},
		FloatValue(RootPath, math.Inf(1)),
		StringValue(RootPath, "\xff"),
		{Kind: KindObjlnk, Str: "1"},
		{Kind: Kind(99)},
	} {
		_, err := EncodeText(v)
		wantErr(t, v.String(), err, ErrInvalidValue)
	}
}

func TestValueAs(t *testing.T) {
	p := ResourcePath(1, 0, 1)
	s := func(x string) Value { return StringValue(p, x) }
	for _, c := range []struct {
		v    Value
		k    Kind
		want Value
	}{
		{s("true"), KindBoolean, BoolValue(p, true)},
		{s("0"), KindBoolean, BoolValue(p, false)},
		{s(" 2.5 "), KindFloat, FloatValue(p, 2.5)},
		{s("\u22122.5"), KindFloat, FloatValue(p, -2.5)},
		{s("01:2"), KindObjlnk, ObjlnkValue(p, 1, 2)},
		{s("AAEC_w"), KindOpaque, OpaqueValue(p, []byte{0, 1, 2, 0xff})},
		{s("AAEC/w=="), KindOpaque, OpaqueValue(p, []byte{0, 1, 2, 0xff})},
		{s("1700000000"), KindTime, TimeValue(p, 1700000000)},
		{IntValue(p, 3), KindFloat, FloatValue(p, 3)},
		{IntValue(p, 3), KindTime, TimeValue(p, 3)},
		{TimeValue(p, 3), KindInteger, IntValue(p, 3)},
		{FloatValue(p, -95), KindInteger, IntValue(p, -95)},
		{FloatValue(p, -9223372036854775808), KindInteger, IntValue(p, math.MinInt64)},
		{OpaqueValue(p, []byte("x")), KindString, s("x")},
	} {
		got, err := c.v.As(c.k)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("%v.As(%s) = %v, %v; want %v", c.v, c.k, got, err, c.want)
		}
	}
	for _, c := range []struct {
		v Value
		k Kind
	}{
		{s("2"), KindBoolean},
		{s("x"), KindFloat},
		{s("1"), KindObjlnk},
		{s("***"), KindOpaque},
		{s("x"), KindUnknown},
		{FloatValue(p, 0.5), KindInteger},
		{FloatValue(p, 9223372036854775807), KindInteger}, // rounds to 2^63
		{FloatValue(p, math.NaN()), KindInteger},
		{FloatValue(p, 1), KindString},
		{IntValue(p, 1), KindString},
		{IntValue(p, 1), KindBoolean},
		{BoolValue(p, true), KindInteger},
		{OpaqueValue(p, []byte{0xff}), KindString},
		{OpaqueValue(p, []byte{1}), KindInteger},
		{ObjlnkValue(p, 1, 1), KindString},
		{Value{Path: p, Bytes: []byte{1}}, Kind(42)},
	} {
		if got, err := c.v.As(c.k); err == nil {
			t.Errorf("%v.As(%s) = %v, want error", c.v, c.k, got)
		} else {
			wantErr(t, c.v.String(), err, ErrMalformed)
		}
	}
	if Kind(42).String() != "Kind(42)" || KindObjlnk.String() != "objlnk" {
		t.Error("Kind.String")
	}
}
