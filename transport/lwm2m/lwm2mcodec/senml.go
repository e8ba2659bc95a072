package lwm2mcodec

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// SenML (RFC 8428) as LwM2M 1.1 uses it (Core 7.4.4, 7.4.5). The JSON and
// CBOR decoders turn each record's fields into fieldVals keyed by the JSON
// label, then share the record logic below.

// CBOR labels (RFC 8428 section 6, table 6). "vlo" (LwM2M object link) has
// no integer label: it is the text key "vlo" in CBOR too.
var senmlCBORLabels = map[int64]string{
	-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
	0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}

const (
	cborLabelBN = -2
	cborLabelN  = 0
	cborLabelV  = 2
	cborLabelVS = 3
	cborLabelVB = 4
	cborLabelVD = 8
)

type fieldKind uint8

const (
	fieldOther fieldKind = iota // null, arrays, objects, ...
	fieldString
	fieldNumber
	fieldBool
	fieldBytes
)

// number is a JSON/CBOR number: an integer when it is one within int64.
type number struct {
	isInt bool
	i     int64
	f     float64
}

func (n number) value(p Path) Value {
	if n.isInt {
		return IntValue(p, n.i)
	}
	return FloatValue(p, n.f)
}

func addNumbers(a, b number) number {
	if a.isInt && b.isInt {
		s := a.i + b.i
		if (s > a.i) == (b.i > 0) { // no overflow
			return number{isInt: true, i: s}
		}
	}
	af, bf := a.f, b.f
	if a.isInt {
		af = float64(a.i)
	}
	if b.isInt {
		bf = float64(b.i)
	}
	return number{f: af + bf}
}

type fieldVal struct {
	kind fieldKind
	s    string
	n    number
	b    bool
	by   []byte
}

// senmlRecord collects one record's fields.
type senmlRecord struct {
	seen   map[string]bool
	bn     *string
	bv     *number
	n      string
	value  Value // kind and field, no path yet
	numV   *number
	values int
}

func (r *senmlRecord) field(label string, f fieldVal, jsonForm bool) error {
	if r.seen[label] {
		return fmt.Errorf("%w: SenML label %q twice in one record", ErrMalformed, label)
	}
	r.seen[label] = true
	bad := func(want string) error {
		return fmt.Errorf("%w: SenML label %q: want %s", ErrMalformed, label, want)
	}
	switch label {
	case "bn":
		if f.kind != fieldString {
			return bad("a string")
		}
		r.bn = &f.s
	case "n":
		if f.kind != fieldString {
			return bad("a string")
		}
		r.n = f.s
	case "bv":
		if f.kind != fieldNumber {
			return bad("a number")
		}
		r.bv = &f.n
	case "v":
		if f.kind != fieldNumber {
			return bad("a number")
		}
		r.numV = &f.n
		r.values++
	case "vs":
		if f.kind != fieldString {
			return bad("a string")
		}
		r.value = Value{Kind: KindString, Str: f.s}
		r.values++
	case "vb":
		if f.kind != fieldBool {
			return bad("a boolean")
		}
		r.value = Value{Kind: KindBoolean, Bool: f.b}
		r.values++
	case "vd":
		var b []byte
		switch {
		case jsonForm && f.kind == fieldString:
			var err error
			if b, err = decodeBase64(f.s); err != nil {
				return bad("base64url data")
			}
		case !jsonForm && f.kind == fieldBytes:
			b = f.by
		default:
			if jsonForm {
				return bad("a base64url string")
			}
			return bad("a byte string")
		}
		if b == nil {
			b = []byte{}
		}
		r.value = Value{Kind: KindOpaque, Bytes: b}
		r.values++
	case "vlo":
		if f.kind != fieldString {
			return bad(`an object link string "oid:iid"`)
		}
		oid, iid, err := parseObjlnk(f.s)
		if err != nil {
			return fmt.Errorf("%w: SenML label \"vlo\": %v", ErrMalformed, err)
		}
		r.value = Value{Kind: KindObjlnk, Str: formatObjlnk(oid, iid)}
		r.values++
	default:
		// Times, units, sums, versions and unknown labels are ignored,
		// except labels ending in "_", which RFC 8428 4.4 says must be
		// understood.
		if strings.HasSuffix(label, "_") {
			return fmt.Errorf("%w: SenML must-understand label %q", ErrMalformed, label)
		}
	}
	return nil
}

// senmlState carries the base fields from record to record.
type senmlState struct {
	req  Path
	json bool // JSON numbers are finite
	bn   string
	bv   *number
	out  []Value
}

func (st *senmlState) record(r *senmlRecord) error {
	if r.bn != nil {
		st.bn = *r.bn
	}
	if r.bv != nil {
		st.bv = r.bv
	}
	switch r.values {
	case 0:
		return nil // no value (e.g. a Read-Composite request record)
	case 1:
	default:
		return fmt.Errorf("%w: SenML record with %d values", ErrMalformed, r.values)
	}
	p, err := resolveName(st.bn+r.n, st.req)
	if err != nil {
		return err
	}
	v := r.value
	if r.numV != nil {
		n := *r.numV
		if st.bv != nil {
			n = addNumbers(*st.bv, n)
		}
		if st.json && !n.isInt && math.IsInf(n.f, 0) {
			return fmt.Errorf("%w: SenML base value plus value overflows", ErrMalformed)
		}
		v = n.value(p)
	}
	v.Path = p
	st.out = append(st.out, v)
	return nil
}

// DecodeSenMLJSON decodes SenML JSON (110): an array of records whose
// base name ("bn", kept until the next one) and name ("n") concatenate to
// the path; values "v" (integer when the literal is an integer within
// int64, else float; a base value "bv" is added), "vs", "vb", "vd" (opaque,
// base64url; padding and the standard alphabet are tolerated) and "vlo"
// (object link). Times, units and unknown labels are ignored; a label ending
// in "_", a repeated label, two values in one record, a name that does not
// resolve to a resource, a value of the wrong JSON type or anything but one
// JSON array is malformed.
func DecodeSenMLJSON(req Path, payload []byte) ([]Value, error) {
	if !req.Valid() {
		return nil, fmt.Errorf("%w: request path %v", ErrInvalidPath, req)
	}
	dec := newJSONDecoder(payload)
	if err := expectDelim(dec, '['); err != nil {
		return nil, err
	}
	st := senmlState{req: req, json: true}
	for dec.More() {
		rec := senmlRecord{seen: map[string]bool{}}
		err := jsonObject(dec, func(key string, raw json.RawMessage) error {
			f, err := jsonField(raw)
			if err != nil {
				return err
			}
			return rec.field(key, f, true)
		})
		if err != nil {
			return nil, err
		}
		if err := st.record(&rec); err != nil {
			return nil, err
		}
	}
	if err := expectDelim(dec, ']'); err != nil {
		return nil, err
	}
	if err := expectEOF(dec); err != nil {
		return nil, err
	}
	return st.out, nil
}

// DecodeSenMLCBOR decodes SenML CBOR (112): the same records as SenML JSON
// with the integer labels of RFC 8428 section 6 (bver -1, bn -2, bt -3, bu
// -4, bv -5, bs -6, n 0, u 1, v 2, vs 3, vb 4, s 5, t 6, ut 7, vd 8, "vd" a
// byte string) and the text label "vlo" for object links (text labels equal
// to the JSON names are accepted too). Definite and indefinite lengths,
// half/single/double floats and tags (ignored) are read; nesting is bounded;
// text must be UTF-8; anything after the array is malformed.
func DecodeSenMLCBOR(req Path, payload []byte) ([]Value, error) {
	if !req.Valid() {
		return nil, fmt.Errorf("%w: request path %v", ErrInvalidPath, req)
	}
	top, err := decodeCBOR(payload)
	if err != nil {
		return nil, err
	}
	if top.kind != cborArray {
		return nil, fmt.Errorf("%w: SenML CBOR is not an array", ErrMalformed)
	}
	st := senmlState{req: req}
	for i, m := range top.items {
		if m.kind != cborMap {
			return nil, fmt.Errorf("%w: SenML CBOR record %d is not a map", ErrMalformed, i)
		}
		rec := senmlRecord{seen: map[string]bool{}}
		for j := 0; j+1 < len(m.items); j += 2 {
			k, v := m.items[j], m.items[j+1]
			var label string
			switch k.kind {
			case cborUint, cborNegInt:
				label = "#" + strconv.FormatUint(k.u, 10) // unknown: ignored
				if k.kind == cborNegInt {
					label = "#-1-" + strconv.FormatUint(k.u, 10)
				}
				if k.u <= math.MaxInt32 {
					l := int64(k.u)
					if k.kind == cborNegInt {
						l = -1 - l
					}
					if name, ok := senmlCBORLabels[l]; ok {
						label = name
					}
				}
			case cborText:
				label = k.s
				if strings.HasPrefix(label, "#") {
					label = "#" + label // keep apart from unknown integers
				}
			default:
				return nil, fmt.Errorf("%w: SenML CBOR record %d: label is neither an integer nor text", ErrMalformed, i)
			}
			if err := rec.field(label, cborField(v), false); err != nil {
				return nil, fmt.Errorf("record %d: %w", i, err)
			}
		}
		if err := st.record(&rec); err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
	}
	return st.out, nil
}

func cborField(it cborItem) fieldVal {
	switch it.kind {
	case cborUint:
		if it.u <= math.MaxInt64 {
			return fieldVal{kind: fieldNumber, n: number{isInt: true, i: int64(it.u)}}
		}
		return fieldVal{kind: fieldNumber, n: number{f: float64(it.u)}}
	case cborNegInt:
		if it.u <= math.MaxInt64 {
			return fieldVal{kind: fieldNumber, n: number{isInt: true, i: -1 - int64(it.u)}}
		}
		return fieldVal{kind: fieldNumber, n: number{f: -1 - float64(it.u)}}
	case cborFloat:
		return fieldVal{kind: fieldNumber, n: number{f: it.f}}
	case cborText:
		return fieldVal{kind: fieldString, s: it.s}
	case cborBytes:
		return fieldVal{kind: fieldBytes, by: it.b}
	case cborBool:
		return fieldVal{kind: fieldBool, b: it.bl}
	default:
		return fieldVal{}
	}
}

// JSON helpers shared with LwM2M JSON.

func newJSONDecoder(payload []byte) *json.Decoder {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	return dec
}

func jsonErr(dec *json.Decoder, err error) error {
	return fmt.Errorf("%w: JSON at offset %d: %v", ErrMalformed, dec.InputOffset(), err)
}

func expectDelim(dec *json.Decoder, d json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return jsonErr(dec, err)
	}
	if tok != d {
		return jsonErr(dec, fmt.Errorf("want %q, got %v", d, tok))
	}
	return nil
}

func expectEOF(dec *json.Decoder) error {
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return jsonErr(dec, errors.New("data after the top-level value"))
	}
	return nil
}

// jsonObject reads one JSON object, calling fn for each member with the
// member's raw value.
func jsonObject(dec *json.Decoder, fn func(key string, raw json.RawMessage) error) error {
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return jsonErr(dec, err)
		}
		key, ok := tok.(string)
		if !ok {
			return jsonErr(dec, fmt.Errorf("object key %v", tok))
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return jsonErr(dec, err)
		}
		if err := fn(key, raw); err != nil {
			return err
		}
	}
	return expectDelim(dec, '}')
}

// jsonField classifies a raw JSON value.
func jsonField(raw json.RawMessage) (fieldVal, error) {
	if len(raw) == 0 {
		return fieldVal{}, nil
	}
	switch c := raw[0]; {
	case c == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return fieldVal{}, fmt.Errorf("%w: JSON string: %v", ErrMalformed, err)
		}
		return fieldVal{kind: fieldString, s: s}, nil
	case c == 't' || c == 'f':
		return fieldVal{kind: fieldBool, b: c == 't'}, nil
	case c == '-' || (c >= '0' && c <= '9'):
		n, err := parseJSONNumber(string(raw))
		if err != nil {
			return fieldVal{}, err
		}
		return fieldVal{kind: fieldNumber, n: n}, nil
	default:
		return fieldVal{}, nil
	}
}

func parseJSONNumber(s string) (number, error) {
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return number{isInt: true, i: i}, nil
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return number{}, fmt.Errorf("%w: JSON number %s out of range", ErrMalformed, s)
	}
	return number{f: f}, nil
}

// JSON writing.

// appendJSONString writes s as a JSON string without HTML escaping.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20 || c == 0x7f:
				dst = fmt.Appendf(dst, `\u%04x`, c)
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == '\u2028' || r == '\u2029' {
			dst = fmt.Appendf(dst, `\u%04x`, r)
		} else {
			dst = append(dst, s[i:i+n]...)
		}
		i += n
	}
	return append(dst, '"')
}

// appendJSONFloat writes a finite float so that it reads back as a float
// (with a '.' or an exponent).
func appendJSONFloat(dst []byte, f float64) []byte {
	start := len(dst)
	dst = strconv.AppendFloat(dst, f, 'g', -1, 64)
	if !bytes.ContainsAny(dst[start:], ".e") {
		dst = append(dst, '.', '0')
	}
	return dst
}

// checkSenMLValue refuses values the SenML and LwM2M JSON encoders cannot
// write (KindUnknown, non-UTF-8 strings, malformed object links).
func checkSenMLValue(v Value) error {
	switch v.Kind {
	case KindString:
		if !utf8.ValidString(v.Str) {
			return fmt.Errorf("%w: %s: string is not UTF-8", ErrInvalidValue, v.Path)
		}
	case KindObjlnk:
		if _, _, err := parseObjlnk(v.Str); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidValue, v.Path, err)
		}
	case KindInteger, KindTime, KindBoolean, KindOpaque, KindFloat:
	default:
		return fmt.Errorf("%w: %s: %s value has no SenML form (interpret it with Value.As first)", ErrInvalidValue, v.Path, v.Kind)
	}
	return nil
}

// EncodeSenMLJSON encodes values as SenML JSON (110). The first record
// carries the base name, the longest path strictly above every value
// followed by "/" (e.g. "/4/0/"); each record's name is the rest of its path
// ("2", "6/0"). Integers and times go in "v" as integers, floats in "v" with
// a '.' or an exponent (so that they read back as floats; NaN and infinities
// are refused), strings in "vs", booleans in "vb", opaque in "vd" (base64url
// without padding) and object links in "vlo".
func EncodeSenMLJSON(vs []Value) ([]byte, error) {
	if err := checkLeaves(vs); err != nil {
		return nil, err
	}
	base := commonBase(vs)
	out := []byte{'['}
	for i, v := range vs {
		if err := checkSenMLValue(v); err != nil {
			return nil, err
		}
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '{')
		if i == 0 {
			out = append(out, `"bn":`...)
			out = appendJSONString(out, senmlBaseName(base))
			out = append(out, ',')
		}
		out = append(out, `"n":`...)
		out = appendJSONString(out, relName(base, v.Path))
		out = append(out, ',')
		switch v.Kind {
		case KindString:
			out = append(out, `"vs":`...)
			out = appendJSONString(out, v.Str)
		case KindInteger, KindTime:
			out = append(out, `"v":`...)
			out = strconv.AppendInt(out, v.Int, 10)
		case KindFloat:
			if math.IsNaN(v.Float) || math.IsInf(v.Float, 0) {
				return nil, fmt.Errorf("%w: %s: float %v has no JSON form", ErrInvalidValue, v.Path, v.Float)
			}
			out = append(out, `"v":`...)
			out = appendJSONFloat(out, v.Float)
		case KindBoolean:
			out = append(out, `"vb":`...)
			out = strconv.AppendBool(out, v.Bool)
		case KindOpaque:
			out = append(out, `"vd":`...)
			out = appendJSONString(out, base64.RawURLEncoding.EncodeToString(v.Bytes))
		case KindObjlnk:
			oid, iid, _ := parseObjlnk(v.Str)
			out = append(out, `"vlo":`...)
			out = appendJSONString(out, formatObjlnk(oid, iid))
		}
		out = append(out, '}')
	}
	return append(out, ']'), nil
}

func senmlBaseName(base Path) string {
	if base.Depth() == 0 {
		return "/"
	}
	return base.String() + "/"
}

// EncodeSenMLCBOR encodes values as SenML CBOR (112): the records of
// EncodeSenMLJSON as definite-length maps with integer labels (bn -2, n 0,
// v 2, vs 3, vb 4, vd 8 as a byte string) and the text label "vlo";
// integers in the shortest form, floats in single precision when exact,
// else double (NaN and infinities are kept, CBOR can carry them).
func EncodeSenMLCBOR(vs []Value) ([]byte, error) {
	if err := checkLeaves(vs); err != nil {
		return nil, err
	}
	base := commonBase(vs)
	out := cborAppendHead(nil, 4, uint64(len(vs)))
	for i, v := range vs {
		if err := checkSenMLValue(v); err != nil {
			return nil, err
		}
		n := uint64(2)
		if i == 0 {
			n = 3
		}
		out = cborAppendHead(out, 5, n)
		if i == 0 {
			out = cborAppendInt(out, cborLabelBN)
			out = cborAppendText(out, senmlBaseName(base))
		}
		out = cborAppendInt(out, cborLabelN)
		out = cborAppendText(out, relName(base, v.Path))
		switch v.Kind {
		case KindString:
			out = cborAppendText(cborAppendInt(out, cborLabelVS), v.Str)
		case KindInteger, KindTime:
			out = cborAppendInt(cborAppendInt(out, cborLabelV), v.Int)
		case KindFloat:
			out = cborAppendFloat(cborAppendInt(out, cborLabelV), v.Float)
		case KindBoolean:
			out = cborAppendBool(cborAppendInt(out, cborLabelVB), v.Bool)
		case KindOpaque:
			out = cborAppendBytes(cborAppendInt(out, cborLabelVD), v.Bytes)
		case KindObjlnk:
			oid, iid, _ := parseObjlnk(v.Str)
			out = cborAppendText(cborAppendText(out, "vlo"), formatObjlnk(oid, iid))
		}
	}
	return out, nil
}
