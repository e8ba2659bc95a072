package lwm2mcodec

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// CoAP Content-Format numbers of the LwM2M formats.
const (
	FormatText      uint16 = 0     // text/plain; charset=utf-8
	FormatLink      uint16 = 40    // application/link-format (RFC 6690)
	FormatOpaque    uint16 = 42    // application/octet-stream
	FormatSenMLJSON uint16 = 110   // application/senml+json (LwM2M 1.1)
	FormatSenMLCBOR uint16 = 112   // application/senml+cbor (LwM2M 1.1)
	FormatTLV       uint16 = 11542 // application/vnd.oma.lwm2m+tlv
	FormatLwM2MJSON uint16 = 11543 // application/vnd.oma.lwm2m+json (LwM2M 1.0)

	// FormatTLVOld and FormatLwM2MJSONOld are the numbers LwM2M 1.0 drafts
	// used before IANA registration; some deployed clients (Wakaama-based
	// stacks among them) still send them. Decode accepts them as aliases.
	FormatTLVOld       uint16 = 1542
	FormatLwM2MJSONOld uint16 = 1543
)

// Errors. Every error of this package wraps one of them.
var (
	// ErrMalformed: a payload (or a value inside it) does not follow its
	// content format.
	ErrMalformed = errors.New("lwm2mcodec: malformed payload")
	// ErrUnsupportedFormat: Decode was given a content format it does not
	// decode values from.
	ErrUnsupportedFormat = errors.New("lwm2mcodec: unsupported content format")
	// ErrInvalidPath: a path string or a Path is not a valid LwM2M path, or
	// not one the operation accepts.
	ErrInvalidPath = errors.New("lwm2mcodec: invalid path")
	// ErrInvalidValue: an encoder was given a value it cannot represent.
	ErrInvalidValue = errors.New("lwm2mcodec: invalid value")
)

// Kind is the data type of a Value.
type Kind uint8

// Value kinds. KindUnknown is the zero Kind: TLV carries no types, so a TLV
// leaf decodes to KindUnknown with the raw bytes in Bytes until Value.As
// interprets it with the type the object model gives the resource.
const (
	KindUnknown Kind = iota // raw TLV bytes in Bytes
	KindString              // Str
	KindInteger             // Int
	KindFloat               // Float
	KindBoolean             // Bool
	KindOpaque              // Bytes
	KindTime                // Int: seconds since the Unix epoch
	KindObjlnk              // Str: "oid:iid", e.g. "3:0"
)

var kindNames = [...]string{"unknown", "string", "integer", "float", "boolean", "opaque", "time", "objlnk"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Value is one resource (or resource instance) value as read from a device
// or as written to one. Only the field of its Kind is meaningful.
type Value struct {
	Path  Path
	Kind  Kind
	Str   string  // KindString; KindObjlnk as "oid:iid"
	Int   int64   // KindInteger; KindTime (Unix seconds)
	Float float64 // KindFloat
	Bool  bool    // KindBoolean
	Bytes []byte  // KindOpaque; KindUnknown (raw TLV value)
}

// StringValue, IntValue, FloatValue, BoolValue, OpaqueValue, TimeValue and
// ObjlnkValue build values of one kind.
func StringValue(p Path, s string) Value { return Value{Path: p, Kind: KindString, Str: s} }

// IntValue returns an integer value.
func IntValue(p Path, i int64) Value { return Value{Path: p, Kind: KindInteger, Int: i} }

// FloatValue returns a float value.
func FloatValue(p Path, f float64) Value { return Value{Path: p, Kind: KindFloat, Float: f} }

// BoolValue returns a boolean value.
func BoolValue(p Path, b bool) Value { return Value{Path: p, Kind: KindBoolean, Bool: b} }

// OpaqueValue returns an opaque value.
func OpaqueValue(p Path, b []byte) Value { return Value{Path: p, Kind: KindOpaque, Bytes: b} }

// TimeValue returns a time value (Unix seconds).
func TimeValue(p Path, unix int64) Value { return Value{Path: p, Kind: KindTime, Int: unix} }

// ObjlnkValue returns an object link value.
func ObjlnkValue(p Path, oid, iid uint16) Value {
	return Value{Path: p, Kind: KindObjlnk, Str: formatObjlnk(oid, iid)}
}

// Objlnk returns the object and instance IDs of an object link value
// (KindObjlnk, or a string/TLV value interpreted as one).
func (v Value) Objlnk() (oid, iid uint16, ok bool) {
	w, err := v.As(KindObjlnk)
	if err != nil {
		return 0, 0, false
	}
	oid, iid, err = parseObjlnk(w.Str)
	return oid, iid, err == nil
}

// Equal reports whether v and w have the same path, kind and value (the
// field of their kind only; NaN equals NaN; nil and empty Bytes are equal).
func (v Value) Equal(w Value) bool {
	if v.Path != w.Path || v.Kind != w.Kind {
		return false
	}
	switch v.Kind {
	case KindString, KindObjlnk:
		return v.Str == w.Str
	case KindInteger, KindTime:
		return v.Int == w.Int
	case KindFloat:
		return v.Float == w.Float || (math.IsNaN(v.Float) && math.IsNaN(w.Float))
	case KindBoolean:
		return v.Bool == w.Bool
	default:
		return bytes.Equal(v.Bytes, w.Bytes)
	}
}

// String formats the value for logs and test failures, e.g.
// "/4/0/2=integer(-95)".
func (v Value) String() string {
	var s string
	switch v.Kind {
	case KindString, KindObjlnk:
		s = strconv.Quote(v.Str)
	case KindInteger, KindTime:
		s = strconv.FormatInt(v.Int, 10)
	case KindFloat:
		s = strconv.FormatFloat(v.Float, 'g', -1, 64)
	case KindBoolean:
		s = strconv.FormatBool(v.Bool)
	default:
		s = fmt.Sprintf("%x", v.Bytes)
	}
	return v.Path.String() + "=" + v.Kind.String() + "(" + s + ")"
}

// As interprets v as kind k, which is how the engine applies the object
// model's resource type to what a device sent:
//
//   - KindUnknown (TLV bytes): String needs valid UTF-8; Integer and Time
//     need 1, 2, 4 or 8 bytes of big-endian two's complement; Float 4 or 8
//     bytes of IEEE 754; Boolean one byte 0 or 1; Objlnk 4 bytes (object ID
//     and instance ID, 16 bits each); Opaque takes the bytes as they are.
//   - KindString (text/plain, LwM2M JSON "sv"): Integer and Time parse a
//     decimal integer (surrounding white space ignored; U+2212 MINUS SIGN is
//     read as '-'; an integral decimal such as "-95.0" is accepted, "-95.5" is
//     not); Float parses a decimal number; Boolean "0"/"1" (also
//     "false"/"true"); Objlnk "oid:iid"; Opaque decodes base64 (standard or
//     URL alphabet, padding optional), as text/plain and LwM2M JSON carry
//     opaque values.
//   - Integer, Time and Float convert to each other; a float becomes an
//     integer only if it is integral and within int64.
//   - Opaque becomes String if it is valid UTF-8.
//
// The returned value keeps v's path. Anything else fails with an error
// wrapping ErrMalformed.
func (v Value) As(k Kind) (Value, error) {
	out := Value{Path: v.Path, Kind: k}
	fail := func(why string) (Value, error) {
		return Value{}, fmt.Errorf("%w: %s: %s value as %s: %s", ErrMalformed, v.Path, v.Kind, k, why)
	}
	if v.Kind == k {
		return v, nil
	}
	switch v.Kind {
	case KindUnknown:
		b := v.Bytes
		switch k {
		case KindString:
			if !utf8.Valid(b) {
				return fail("not UTF-8")
			}
			out.Str = string(b)
		case KindInteger, KindTime:
			switch len(b) {
			case 1:
				out.Int = int64(int8(b[0]))
			case 2:
				out.Int = int64(int16(binary.BigEndian.Uint16(b)))
			case 4:
				out.Int = int64(int32(binary.BigEndian.Uint32(b)))
			case 8:
				out.Int = int64(binary.BigEndian.Uint64(b))
			default:
				return fail(fmt.Sprintf("%d bytes, want 1, 2, 4 or 8", len(b)))
			}
		case KindFloat:
			switch len(b) {
			case 4:
				out.Float = float64(math.Float32frombits(binary.BigEndian.Uint32(b)))
			case 8:
				out.Float = math.Float64frombits(binary.BigEndian.Uint64(b))
			default:
				return fail(fmt.Sprintf("%d bytes, want 4 or 8", len(b)))
			}
		case KindBoolean:
			if len(b) != 1 || b[0] > 1 {
				return fail("want one byte 0 or 1")
			}
			out.Bool = b[0] == 1
		case KindObjlnk:
			if len(b) != 4 {
				return fail(fmt.Sprintf("%d bytes, want 4", len(b)))
			}
			out.Str = formatObjlnk(binary.BigEndian.Uint16(b), binary.BigEndian.Uint16(b[2:]))
		case KindOpaque:
			out.Bytes = v.Bytes
		default:
			return fail("no such conversion")
		}
	case KindString:
		switch k {
		case KindInteger, KindTime:
			i, err := parseIntText(v.Str)
			if err != nil {
				return fail(err.Error())
			}
			out.Int = i
		case KindFloat:
			f, err := strconv.ParseFloat(strings.TrimSpace(strings.ReplaceAll(v.Str, "\u2212", "-")), 64)
			if err != nil {
				return fail("not a decimal number")
			}
			out.Float = f
		case KindBoolean:
			switch strings.TrimSpace(v.Str) {
			case "1", "true":
				out.Bool = true
			case "0", "false":
			default:
				return fail("want 0 or 1")
			}
		case KindObjlnk:
			oid, iid, err := parseObjlnk(strings.TrimSpace(v.Str))
			if err != nil {
				return fail(err.Error())
			}
			out.Str = formatObjlnk(oid, iid)
		case KindOpaque:
			b, err := decodeBase64(strings.TrimSpace(v.Str))
			if err != nil {
				return fail("not base64")
			}
			out.Bytes = b
		default:
			return fail("no such conversion")
		}
	case KindInteger, KindTime:
		switch k {
		case KindInteger, KindTime:
			out.Int = v.Int
		case KindFloat:
			out.Float = float64(v.Int)
		default:
			return fail("no such conversion")
		}
	case KindFloat:
		switch k {
		case KindInteger, KindTime:
			i, ok := floatToInt(v.Float)
			if !ok {
				return fail("not an integral number within int64")
			}
			out.Int = i
		default:
			return fail("no such conversion")
		}
	case KindOpaque:
		if k != KindString || !utf8.Valid(v.Bytes) {
			return fail("no such conversion")
		}
		out.Str = string(v.Bytes)
	default:
		return fail("no such conversion")
	}
	return out, nil
}

// floatToInt converts an integral float within int64.
func floatToInt(f float64) (int64, bool) {
	// -2^63 is exact in float64; 2^63 is the first value out of range.
	if f != math.Trunc(f) || f < -(1<<63) || f >= 1<<63 {
		return 0, false
	}
	return int64(f), true
}

// parseIntText parses the text form of an integer resource.
func parseIntText(s string) (int64, error) {
	s = strings.TrimSpace(strings.ReplaceAll(s, "\u2212", "-"))
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i, nil
	}
	// An integral decimal ("-95.0", "1e3") is accepted; hex, Inf, NaN,
	// underscores and non-integral numbers are not.
	if s == "" || strings.ContainsAny(s, "xXpP_iInN") {
		return 0, fmt.Errorf("%q is not a decimal integer", s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a decimal integer", s)
	}
	i, ok := floatToInt(f)
	if !ok {
		return 0, fmt.Errorf("%q is not an integer within int64", s)
	}
	return i, nil
}

// decodeBase64 decodes base64 in either alphabet, padded or not.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// lookup returns the last value at exactly p. The last one wins so that a
// SenML time series (oldest first) yields its newest value.
func lookup(vs []Value, p Path) (Value, bool) {
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].Path == p {
			return vs[i], true
		}
	}
	return Value{}, false
}

// StringAt returns the string value at exactly p (the last one if several),
// e.g. /3/0/3 Firmware Version: a string, TLV bytes or opaque bytes that are
// valid UTF-8. The text is returned as sent (not trimmed).
func StringAt(vs []Value, p Path) (string, bool) {
	v, ok := lookup(vs, p)
	if !ok {
		return "", false
	}
	w, err := v.As(KindString)
	if err != nil {
		return "", false
	}
	return w.Str, true
}

// IntAt returns the integer value at exactly p (the last one if several),
// e.g. /4/0/2 RSRP, /4/0/8 cell ID, /4/0/11 SINR, /5/0/3 State, /5/0/5 Update
// Result: an integer or time; TLV bytes of 1, 2, 4 or 8 bytes (big-endian two's
// complement); text parsing as a decimal integer; or an integral float.
// Non-integral numbers, booleans and other lengths give false. A multiple
// resource has no value at /o/i/r itself: ask for /o/i/r/ri.
func IntAt(vs []Value, p Path) (int64, bool) {
	v, ok := lookup(vs, p)
	if !ok {
		return 0, false
	}
	w, err := v.As(KindInteger)
	if err != nil {
		return 0, false
	}
	return w.Int, true
}

// Decode decodes a Read response or Notify payload in content format cf for
// the requested path. Values come out in payload order with full paths.
//
//   - text/plain (0) and opaque (42) need a resource or resource-instance
//     path and give one KindString (valid UTF-8 required) or KindOpaque value
//     at it.
//   - TLV (11542, alias 1542) needs a path with at least an object: TLV
//     identifiers are relative to it (see doc.go for the layouts accepted).
//   - SenML JSON (110), SenML CBOR (112) and LwM2M JSON (11543, alias 1543)
//     carry their own names; the path resolves names that are not absolute
//     (and an empty name), which LwM2M 1.0 JSON allows when "bn" is absent.
//     Values outside path are kept (a composite notification may carry
//     them); records without a value are skipped.
//
// Errors wrap ErrMalformed, ErrInvalidPath or ErrUnsupportedFormat.
func Decode(cf uint16, path Path, payload []byte) ([]Value, error) {
	if !path.Valid() {
		return nil, fmt.Errorf("%w: request path %v", ErrInvalidPath, path)
	}
	switch cf {
	case FormatText:
		if !path.IsLeaf() {
			return nil, fmt.Errorf("%w: text/plain carries one resource; request path %s is not one", ErrInvalidPath, path)
		}
		if !utf8.Valid(payload) {
			return nil, fmt.Errorf("%w: text/plain payload is not UTF-8", ErrMalformed)
		}
		return []Value{{Path: path, Kind: KindString, Str: string(payload)}}, nil
	case FormatOpaque:
		if !path.IsLeaf() {
			return nil, fmt.Errorf("%w: opaque carries one resource; request path %s is not one", ErrInvalidPath, path)
		}
		return []Value{{Path: path, Kind: KindOpaque, Bytes: bytes.Clone(payload)}}, nil
	case FormatTLV, FormatTLVOld:
		return DecodeTLV(path, payload)
	case FormatSenMLJSON:
		return DecodeSenMLJSON(path, payload)
	case FormatSenMLCBOR:
		return DecodeSenMLCBOR(path, payload)
	case FormatLwM2MJSON, FormatLwM2MJSONOld:
		return DecodeLwM2MJSON(path, payload)
	default:
		return nil, fmt.Errorf("%w: %d", ErrUnsupportedFormat, cf)
	}
}

// resolveName turns a SenML / LwM2M JSON name (base name + name) into a
// path: an absolute name is parsed as is; an empty name is the request path;
// a relative one is appended to the request path.
func resolveName(full string, req Path) (Path, error) {
	var p Path
	var err error
	switch {
	case full == "":
		p = req
	case strings.HasPrefix(full, "/"):
		p, err = ParsePath(full)
	case req.Depth() == 0:
		p, err = ParsePath("/" + full)
	default:
		p, err = ParsePath(req.String() + "/" + full)
	}
	if err != nil {
		return Path{}, fmt.Errorf("%w: name %q: %v", ErrMalformed, full, err)
	}
	if !p.IsLeaf() {
		return Path{}, fmt.Errorf("%w: name %q resolves to %s, not a resource", ErrMalformed, full, p)
	}
	return p, nil
}

// commonBase returns the longest path that is a strict prefix of every
// value's path: the base name the JSON/CBOR encoders write.
func commonBase(vs []Value) Path {
	if len(vs) == 0 {
		return RootPath
	}
	c := vs[0].Path.components()
	d := vs[0].Path.Depth()
	for _, v := range vs[1:] {
		vc := v.Path.components()
		n := 0
		for n < d && vc[n] == c[n] {
			n++
		}
		d = n
	}
	for _, v := range vs {
		if v.Path.Depth() <= d {
			d = v.Path.Depth() - 1
		}
	}
	if d < 0 {
		d = 0
	}
	for i := d; i < 4; i++ {
		c[i] = -1
	}
	return Path{c[0], c[1], c[2], c[3]}
}

// relName returns p relative to base (which strictly contains p), e.g. "6/0".
func relName(base, p Path) string {
	s := p.String()
	if base.Depth() == 0 {
		return s[1:]
	}
	return s[len(base.String())+1:]
}

// checkLeaves verifies that every value has a valid resource (instance) path.
func checkLeaves(vs []Value) error {
	for _, v := range vs {
		if !v.Path.IsLeaf() {
			return fmt.Errorf("%w: value path %v is not a resource or resource instance", ErrInvalidPath, v.Path)
		}
	}
	return nil
}
