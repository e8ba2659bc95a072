package lwm2mcodec

import "testing"

func TestParsePath(t *testing.T) {
	good := []struct {
		s    string
		want Path
	}{
		{"/", RootPath},
		{"/3", ObjectPath(3)},
		{"/3/0", InstancePath(3, 0)},
		{"/3/0/3", ResourcePath(3, 0, 3)},
		{"/3/0/6/1", ResourceInstancePath(3, 0, 6, 1)},
		{"/65535/65535/65535/65535", ResourceInstancePath(65535, 65535, 65535, 65535)},
		{"/19/1/0", ResourcePath(19, 1, 0)},
	}
	for _, c := range good {
		p, err := ParsePath(c.s)
		if err != nil || p != c.want {
			t.Errorf("ParsePath(%q) = %v, %v; want %v", c.s, p, err, c.want)
		}
		if p.String() != c.s {
			t.Errorf("%v.String() = %q, want %q", p, p.String(), c.s)
		}
		if !p.Valid() {
			t.Errorf("%v not valid", p)
		}
	}
	for _, s := range []string{
		"", "3/0", "//", "/3/", "/3//0", "/3/0/0/0/0", "/65536", "/-1", "/+1", "/03",
		"/3/00", "/a", "/3/0x1", " /3", "/3 ", "/1e3", "/999999999999",
	} {
		if p, err := ParsePath(s); err == nil {
			t.Errorf("ParsePath(%q) = %v, want error", s, p)
		} else {
			wantErr(t, s, err, ErrInvalidPath)
		}
	}
}

func TestPathMethods(t *testing.T) {
	p := ResourceInstancePath(3, 0, 6, 1)
	if p.Depth() != 4 || p.Parent() != ResourcePath(3, 0, 6) || RootPath.Parent() != RootPath {
		t.Error("Depth/Parent")
	}
	if !InstancePath(3, 0).Contains(p) || !RootPath.Contains(p) || InstancePath(3, 1).Contains(p) || p.Contains(InstancePath(3, 0)) {
		t.Error("Contains")
	}
	if !p.IsLeaf() || InstancePath(3, 0).IsLeaf() {
		t.Error("IsLeaf")
	}
	for _, bad := range []Path{{-1, 0, -1, -1}, {3, -1, 0, -1}, {65536, -1, -1, -1}, {-2, -1, -1, -1}, {0, 0, 0, 0x10000}} {
		if bad.Valid() {
			t.Errorf("%#v valid", bad)
		}
	}
	if (Path{3, -1, 5, -1}).String() != "/3" {
		t.Error("String of an invalid path shows the leading components")
	}
}
