package lwm2mcodec

import (
	"strings"
	"testing"
)

// deviceLwM2MJSON is the Read /3/0 example of LwM2M 1.0 Core 6.4.4.
const deviceLwM2MJSON = `{"bn":"/3/0/",
"e":[
{"n":"0","sv":"Open Mobile Alliance"},
{"n":"1","sv":"Lightweight M2M Client"},
{"n":"2","sv":"345000123"},
{"n":"3","sv":"1.0"},
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
{"n":"14","sv":"+02:00"},
{"n":"16","sv":"U"}]}`

func TestLwM2MJSONDeviceObject(t *testing.T) {
	for _, cf := range []uint16{FormatLwM2MJSON, FormatLwM2MJSONOld} {
		got, err := Decode(cf, InstancePath(3, 0), []byte(deviceLwM2MJSON))
		if err != nil {
			t.Fatal(err)
		}
		want := deviceObject()
		checkValues(t, "decode", interpret(t, got, kindsOf(want)), want)
	}
	enc, err := EncodeLwM2MJSON(deviceObject())
	if err != nil {
		t.Fatal(err)
	}
	if string(enc) != strings.ReplaceAll(deviceLwM2MJSON, "\n", "") {
		t.Errorf("EncodeLwM2MJSON:\n got  %s\n want %s", enc, deviceLwM2MJSON)
	}
}

func TestLwM2MJSONReads(t *testing.T) {
	fw := ResourcePath(3, 0, 3)
	for _, s := range []string{
		`{"bn":"/3/0/","e":[{"n":"3","sv":"1.0"}]}`,
		`{"bn":"/3/0/3","e":[{"sv":"1.0"}]}`,
		`{"e":[{"n":"","sv":"1.0"}]}`,                      // no base name: the request path
		`{"e":[{"sv":"1.0","t":5}],"bt":17,"x":{"y":[1]}}`, // times and unknown members ignored
		`{"e":[{"n":"3","sv":"1.0"}],"bn":"/3/0/"}`,        // "bn" after "e"
	} {
		got, err := Decode(FormatLwM2MJSON, fw, []byte(s))
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		checkValues(t, s, got, []Value{StringValue(fw, "1.0")})
	}
	radio := `{"bn":"/4/0/","e":[{"n":"2","v":-95},{"n":"8","v":12345},{"n":"11","v":12}]}`
	got, err := Decode(FormatLwM2MJSON, InstancePath(4, 0), []byte(radio))
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, "radio", got, radioValues())
	if enc, _ := EncodeLwM2MJSON(radioValues()); string(enc) != radio {
		t.Errorf("encode radio = %s", enc)
	}
	// 1.0 clients without "bn" name resources relative to the request.
	got, err = Decode(FormatLwM2MJSON, InstancePath(4, 0), []byte(`{"e":[{"n":"2","v":-95.0},{"n":"8","v":12345},{"n":"0","bv":true},{"n":"1","ov":"4:0"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if i, ok := IntAt(got, ResourcePath(4, 0, 2)); !ok || i != -95 {
		t.Errorf("RSRP = %d %v", i, ok)
	}
	checkValues(t, "other kinds", got[2:], []Value{BoolValue(ResourcePath(4, 0, 0), true), ObjlnkValue(ResourcePath(4, 0, 1), 4, 0)})
}

func TestLwM2MJSONMalformed(t *testing.T) {
	p := InstancePath(3, 0)
	for _, s := range []string{
		``, `[]`, `null`, `{}`, `{"bn":"/3/0/"}`, `{"e":{}}`, `{"e":[1]}`, `{"e":[]`, `{"e":[]}x`,
		`{"e":[],"e":[]}`,
		`{"bn":3,"e":[]}`,
		`{"bn":"/3/0/","e":[{"n":"3","sv":"1.0","v":1}]}`,
		`{"bn":"/3/0/","e":[{"n":"3","sv":"1.0","sv":"1"}]}`,
		`{"bn":"/3/0/","e":[{"n":3,"sv":"1.0"}]}`,
		`{"bn":"/3/0/","e":[{"n":"3","v":"1"}]}`,
		`{"bn":"/3/0/","e":[{"n":"3","bv":"true"}]}`,
		`{"bn":"/3/0/","e":[{"n":"3","ov":"1"}]}`,
		`{"bn":"/3/0/","e":[{"n":"3","v":1e400}]}`,
		`{"bn":"/3/0","e":[{"n":"3","sv":"1.0"}]}`,
		`{"bn":"/3/0/","e":[{"n":"","sv":"1.0"}]}`, // "/3/0/" is not a path
		`{"e":[{"sv":"1.0"}]}`,                     // the request path /3/0 is not a resource
	} {
		_, err := Decode(FormatLwM2MJSON, p, []byte(s))
		wantErr(t, s, err, ErrMalformed)
	}
}

func TestLwM2MJSONRoundTripAllKinds(t *testing.T) {
	vs := allKinds()
	enc, err := EncodeLwM2MJSON(vs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(FormatLwM2MJSON, RootPath, enc)
	if err != nil {
		t.Fatalf("%v\n%s", err, enc)
	}
	// Times come back as integers and opaque as base64 strings: the object
	// model's types restore them.
	checkValues(t, "round trip", interpret(t, got, kindsOf(vs)), vs)
	for i, v := range got {
		if vs[i].Kind == KindOpaque && v.Kind != KindString {
			t.Errorf("opaque read back as %s", v.Kind)
		}
	}
}
