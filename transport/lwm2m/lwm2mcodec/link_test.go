package lwm2mcodec

import (
	"reflect"
	"testing"
)

func TestParseLinkFormatRegistration(t *testing.T) {
	s := `</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</4/0>,</5/0>,</19/0>,</19/1>`
	links, err := ParseLinkFormat(s)
	if err != nil {
		t.Fatal(err)
	}
	want := []Link{
		{"/", map[string]string{"rt": "oma.lwm2m", "ct": "11543"}},
		{"/1/0", map[string]string{}}, {"/3/0", map[string]string{}}, {"/4/0", map[string]string{}},
		{"/5/0", map[string]string{}}, {"/19/0", map[string]string{}}, {"/19/1", map[string]string{}},
	}
	if !reflect.DeepEqual(links, want) {
		t.Fatalf("got %v", links)
	}
	if got := FormatLinks(links); got != `</>;ct=11543;rt="oma.lwm2m",</1/0>,</3/0>,</4/0>,</5/0>,</19/0>,</19/1>` {
		t.Errorf("FormatLinks = %s", got)
	}
	objs, alt, err := Objects(links)
	if err != nil || alt != "" {
		t.Fatal(err, alt)
	}
	var paths []string
	for _, o := range objs {
		paths = append(paths, o.Path.String())
	}
	if !reflect.DeepEqual(paths, []string{"/1/0", "/3/0", "/4/0", "/5/0", "/19/0", "/19/1"}) {
		t.Errorf("objects = %v", paths)
	}
	if cts, err := ContentFormats(links); err != nil || !reflect.DeepEqual(cts, []uint16{11543}) {
		t.Errorf("ContentFormats = %v %v", cts, err)
	}
}

func TestParseLinkFormatForms(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []Link
	}{
		{``, nil},
		{"  \n", nil},
		{`</5>;ver=1.1`, []Link{{"/5", map[string]string{"ver": "1.1"}}}},
		{`</lwm2m>;rt="oma.lwm2m",</lwm2m/3/0>`, []Link{{"/lwm2m", map[string]string{"rt": "oma.lwm2m"}}, {"/lwm2m/3/0", map[string]string{}}}},
		{` </1/0> , </3/0> ;  ver = 1.0 ;obs,` + "\n\t" + `</5>`, []Link{
			{"/1/0", map[string]string{}}, {"/3/0", map[string]string{"ver": "1.0", "obs": ""}}, {"/5", map[string]string{}}}},
		{`</>;rt="oma.lwm2m";ct="60 110 112 11543"`, []Link{{"/", map[string]string{"rt": "oma.lwm2m", "ct": "60 110 112 11543"}}}},
		{`</a>;title="x, y; z=\"q\" \\ end",</b>`, []Link{{"/a", map[string]string{"title": `x, y; z="q" \ end`}}, {"/b", map[string]string{}}}},
		{`</a>;RT="x";rt="y";Obs`, []Link{{"/a", map[string]string{"rt": "x", "obs": ""}}}}, // names lower-cased, first kept
		{`<coap://[::1]:5683/3/0?a=b#c>;anchor="/"`, []Link{{"coap://[::1]:5683/3/0?a=b#c", map[string]string{"anchor": "/"}}}},
		{`</3/0/6>;dim=2`, []Link{{"/3/0/6", map[string]string{"dim": "2"}}}},
		{`</a>;e=""`, []Link{{"/a", map[string]string{"e": ""}}}},
		{`</a>;p=<x>`, []Link{{"/a", map[string]string{"p": "<x>"}}}},
	} {
		got, err := ParseLinkFormat(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q:\n got  %v\n want %v", c.in, got, c.want)
		}
		// Formatting reads back the same.
		again, err := ParseLinkFormat(FormatLinks(got))
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("%q: round trip %q -> %v, %v", c.in, FormatLinks(got), again, err)
		}
	}
	l := Link{Target: "/a", Params: map[string]string{"title": `x "y"`, "ct": "0 40", "sz": "12", "rt": "r"}}
	if got := l.String(); got != `</a>;ct="0 40";rt="r";sz=12;title="x \"y\""` {
		t.Errorf("String = %s", got)
	}
	if got := (Link{Target: "/5"}).String(); got != "</5>" {
		t.Errorf("String without params = %s", got)
	}
}

func TestParseLinkFormatMalformed(t *testing.T) {
	for _, s := range []string{
		`/3/0`, `<>`, `</3/0`, `</3 /0>`, `</3/0>,`, `,</3/0>`, `</3/0>,,</4/0>`, `</3/0></4/0>`,
		`</3/0>;`, `</3/0>;=1`, `</3/0>;ver=`, `</3/0>;ver="1.1`, `</3/0>;ver="1.1\`, `</3/0>;t="a` + "\x01" + `"`,
		`</3/0>;ver=1.1 1`, `</3/0>;ver=1,1`, "</3/0>;a=\x00", `</3/"0>`, "</3/\xc3\xa9>", `<</3>`,
		`</3/0> x`, `</3/0>;ver="1"x`,
	} {
		if links, err := ParseLinkFormat(s); err == nil {
			t.Errorf("%q: parsed as %v", s, links)
		} else {
			wantErr(t, s, err, ErrMalformed)
		}
	}
}

func TestObjects(t *testing.T) {
	parse := func(s string) []Link {
		l, err := ParseLinkFormat(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	objs, alt, err := Objects(parse(`</lwm2m>;rt="oma.lwm2m",</lwm2m/1>;ver=1.1,</lwm2m/1/0>,</lwm2m/3/0>,</lwm2m/3/0/6>;dim=2,</lwm2m/5>`))
	if err != nil {
		t.Fatal(err)
	}
	want := []ObjectLink{{ObjectPath(1), "1.1"}, {InstancePath(1, 0), ""}, {InstancePath(3, 0), ""}, {ObjectPath(5), ""}}
	if alt != "/lwm2m" || !reflect.DeepEqual(objs, want) {
		t.Errorf("Objects = %v %q", objs, alt)
	}
	// Trailing slash on the alternate path; rt with several types; no root
	// link; a bare root without rt.
	for _, c := range []struct {
		in, alt string
		n       int
	}{
		{`</my/path/>;rt="x oma.lwm2m",</my/path/3/0>`, "/my/path", 1},
		{`</3/0>,</5>;ver=1.1`, "", 2},
		{`</>;ct=11543,</3/0>`, "", 1},
		{``, "", 0},
		{`</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</4/0>,</5/0>,</19/0>,</19/1>`, "", 6},
	} {
		objs, alt, err := Objects(parse(c.in))
		if err != nil || alt != c.alt || len(objs) != c.n {
			t.Errorf("%s: %v %q %v", c.in, objs, alt, err)
		}
	}
	if objs, _, _ := Objects(parse(`</5>;ver=1.1`)); len(objs) != 1 || objs[0].Version != "1.1" || objs[0].Path != ObjectPath(5) {
		t.Errorf("ver: %v", objs)
	}
	for _, s := range []string{
		`</lwm2m>;rt="oma.lwm2m",</3/0>`,                       // outside the alternate path
		`</a>;rt="oma.lwm2m",</b>;rt="oma.lwm2m"`,              // two roots
		`<lwm2m>;rt="oma.lwm2m"`,                               // relative alternate path
		`</3/x>`, `</3/0/1/2/3>`, `</65536>`, `</03>`, `<3/0>`, // not numeric paths
	} {
		_, _, err := Objects(parse(s))
		wantErr(t, s, err, ErrMalformed)
	}
	if cts, err := ContentFormats(parse(`</>;rt="oma.lwm2m";ct="60 110 112 11543"`)); err != nil || !reflect.DeepEqual(cts, []uint16{60, 110, 112, 11543}) {
		t.Errorf("ContentFormats = %v %v", cts, err)
	}
	if cts, err := ContentFormats(parse(`</3/0>;ct=0`)); err != nil || cts != nil {
		t.Errorf("ContentFormats without a root = %v %v", cts, err)
	}
	_, err = ContentFormats(parse(`</>;ct=x`))
	wantErr(t, "ct=x", err, ErrMalformed)
}
