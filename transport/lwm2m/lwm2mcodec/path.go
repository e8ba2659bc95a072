package lwm2mcodec

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxID is the largest object, instance, resource or resource-instance ID: IDs
// are 16-bit unsigned integers on the wire (TLV identifiers, object links).
const MaxID = 65535

// Path is an LwM2M path /object[/instance[/resource[/resource-instance]]].
// An absent component is -1; components are present from the left, so a
// valid Path is one of /, /o, /o/i, /o/i/r and /o/i/r/ri.
type Path struct {
	Object, Instance, Resource, ResourceInstance int32
}

// RootPath is the path "/" (no component).
var RootPath = Path{-1, -1, -1, -1}

// ObjectPath, InstancePath, ResourcePath and ResourceInstancePath build paths
// of one to four components. They do not check ranges: see Path.Valid.
func ObjectPath(o int32) Path { return Path{o, -1, -1, -1} }

// InstancePath returns /o/i.
func InstancePath(o, i int32) Path { return Path{o, i, -1, -1} }

// ResourcePath returns /o/i/r.
func ResourcePath(o, i, r int32) Path { return Path{o, i, r, -1} }

// ResourceInstancePath returns /o/i/r/ri.
func ResourceInstancePath(o, i, r, ri int32) Path { return Path{o, i, r, ri} }

// components returns the path's components in order.
func (p Path) components() [4]int32 {
	return [4]int32{p.Object, p.Instance, p.Resource, p.ResourceInstance}
}

// Depth is the number of components: 0 for /, 1 for /o, ..., 4 for
// /o/i/r/ri. For an invalid path it counts the components present before the
// first absent one.
func (p Path) Depth() int {
	c := p.components()
	for i, v := range c {
		if v < 0 {
			return i
		}
	}
	return 4
}

// Valid reports whether the components are present from the left (no
// present component after an absent one), absent ones are exactly -1 and
// present ones lie in 0..MaxID.
func (p Path) Valid() bool {
	c := p.components()
	absent := false
	for _, v := range c {
		switch {
		case v == -1:
			absent = true
		case v < -1 || v > MaxID || absent:
			return false
		}
	}
	return true
}

// IsLeaf reports whether p names a resource or a resource instance, the
// paths that carry values.
func (p Path) IsLeaf() bool { return p.Valid() && p.Resource >= 0 }

// Parent returns p without its last component (/ stays /).
func (p Path) Parent() Path {
	c := p.components()
	d := p.Depth()
	if d == 0 {
		return RootPath
	}
	c[d-1] = -1
	return Path{c[0], c[1], c[2], c[3]}
}

// Contains reports whether q is p or lies below p (e.g. /3/0 contains
// /3/0/1 and /3/0; / contains every path).
func (p Path) Contains(q Path) bool {
	pc, qc := p.components(), q.components()
	for i, v := range pc {
		if v < 0 {
			return true
		}
		if qc[i] != v {
			return false
		}
	}
	return true
}

// String returns the path as "/3/0/3"; the root path is "/". Components
// after the first absent one are not shown.
func (p Path) String() string {
	d := p.Depth()
	if d == 0 {
		return "/"
	}
	var b strings.Builder
	c := p.components()
	for _, v := range c[:d] {
		b.WriteByte('/')
		b.WriteString(strconv.FormatInt(int64(v), 10))
	}
	return b.String()
}

// ParsePath parses "/", "/o", "/o/i", "/o/i/r" or "/o/i/r/ri". Components
// are decimal 0..65535 without sign or leading zeros ("0" itself is fine); a
// trailing slash, an empty component or a fifth component is an error
// wrapping ErrInvalidPath. Rejecting leading zeros keeps the text form
// canonical and catches SenML names glued to a base name without a slash
// ("/3/0" + "0" is not silently read as /3/0).
func ParsePath(s string) (Path, error) {
	if s == "/" {
		return RootPath, nil
	}
	if !strings.HasPrefix(s, "/") {
		return Path{}, fmt.Errorf("%w: %q does not start with /", ErrInvalidPath, s)
	}
	p := RootPath
	parts := strings.Split(s[1:], "/")
	if len(parts) > 4 {
		return Path{}, fmt.Errorf("%w: %q has more than 4 components", ErrInvalidPath, s)
	}
	for i, part := range parts {
		v, err := parseID(part)
		if err != nil {
			return Path{}, fmt.Errorf("%w: %q: component %d: %v", ErrInvalidPath, s, i+1, err)
		}
		switch i {
		case 0:
			p.Object = v
		case 1:
			p.Instance = v
		case 2:
			p.Resource = v
		case 3:
			p.ResourceInstance = v
		}
	}
	return p, nil
}

// parseID parses one canonical decimal ID in 0..MaxID.
func parseID(s string) (int32, error) {
	if s == "" {
		return 0, fmt.Errorf("empty")
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, fmt.Errorf("leading zero in %q", s)
	}
	if len(s) > 5 {
		return 0, fmt.Errorf("%q out of range 0..%d", s, MaxID)
	}
	var v int32
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a decimal number", s)
		}
		v = v*10 + int32(c-'0')
	}
	if v > MaxID {
		return 0, fmt.Errorf("%q out of range 0..%d", s, MaxID)
	}
	return v, nil
}

// parseObjlnk parses an object link "oid:iid" (each 0..65535 decimal;
// leading zeros are tolerated here since no concatenation is involved).
func parseObjlnk(s string) (oid, iid uint16, err error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("object link %q has no ':'", s)
	}
	x, err1 := strconv.ParseUint(a, 10, 16)
	y, err2 := strconv.ParseUint(b, 10, 16)
	if err1 != nil || err2 != nil { // ParseUint takes no sign
		return 0, 0, fmt.Errorf("object link %q is not oid:iid with IDs 0..65535", s)
	}
	return uint16(x), uint16(y), nil
}

// formatObjlnk returns "oid:iid".
func formatObjlnk(oid, iid uint16) string {
	return strconv.FormatUint(uint64(oid), 10) + ":" + strconv.FormatUint(uint64(iid), 10)
}
