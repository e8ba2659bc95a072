package lwm2mcodec

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// DecodeLwM2MJSON decodes LwM2M JSON (11543, LwM2M 1.0 Core 6.4.4): an
// object with an optional base name "bn", an optional base time "bt"
// (ignored) and the array "e" of entries, each with a name "n" (relative to
// "bn"; "bn" + "n" is the path, resolved against req when not absolute) and
// one of "v" (number: integer when the literal is an integer within int64,
// else float; also times), "bv" (boolean), "sv" (string; opaque values come
// as base64 here, which Value.As(KindOpaque) decodes) and "ov" (object link
// "oid:iid"). Entry times "t" and unknown members are ignored; entries
// without a value are skipped. A repeated member, two values in one entry,
// a value of the wrong JSON type, a missing "e" or anything but one JSON
// object is malformed.
func DecodeLwM2MJSON(req Path, payload []byte) ([]Value, error) {
	if !req.Valid() {
		return nil, fmt.Errorf("%w: request path %v", ErrInvalidPath, req)
	}
	dec := newJSONDecoder(payload)
	var (
		bn      string
		entries []*lwm2mJSONEntry
		haveE   bool
		seen    = map[string]bool{}
	)
	err := jsonObject(dec, func(key string, raw json.RawMessage) error {
		if seen[key] {
			return fmt.Errorf("%w: LwM2M JSON member %q twice", ErrMalformed, key)
		}
		seen[key] = true
		switch key {
		case "bn":
			f, err := jsonField(raw)
			if err != nil {
				return err
			}
			if f.kind != fieldString {
				return fmt.Errorf("%w: LwM2M JSON \"bn\" is not a string", ErrMalformed)
			}
			bn = f.s
		case "e":
			haveE = true
			edec := newJSONDecoder(raw)
			if err := expectDelim(edec, '['); err != nil {
				return fmt.Errorf("LwM2M JSON \"e\": %w", err)
			}
			for edec.More() {
				e := &lwm2mJSONEntry{seen: map[string]bool{}}
				if err := jsonObject(edec, e.member); err != nil {
					return fmt.Errorf("LwM2M JSON entry %d: %w", len(entries), err)
				}
				entries = append(entries, e)
			}
			return expectDelim(edec, ']')
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := expectEOF(dec); err != nil {
		return nil, err
	}
	if !haveE {
		return nil, fmt.Errorf("%w: LwM2M JSON without \"e\"", ErrMalformed)
	}
	var out []Value
	for i, e := range entries {
		if e.values == 0 {
			continue
		}
		if e.values > 1 {
			return nil, fmt.Errorf("%w: LwM2M JSON entry %d has %d values", ErrMalformed, i, e.values)
		}
		p, err := resolveName(bn+e.n, req)
		if err != nil {
			return nil, fmt.Errorf("LwM2M JSON entry %d: %w", i, err)
		}
		v := e.value
		v.Path = p
		out = append(out, v)
	}
	return out, nil
}

type lwm2mJSONEntry struct {
	seen   map[string]bool
	n      string
	value  Value
	values int
}

func (e *lwm2mJSONEntry) member(key string, raw json.RawMessage) error {
	if e.seen[key] {
		return fmt.Errorf("%w: member %q twice", ErrMalformed, key)
	}
	e.seen[key] = true
	f, err := jsonField(raw)
	if err != nil {
		return err
	}
	bad := func(want string) error {
		return fmt.Errorf("%w: member %q: want %s", ErrMalformed, key, want)
	}
	switch key {
	case "n":
		if f.kind != fieldString {
			return bad("a string")
		}
		e.n = f.s
	case "v":
		if f.kind != fieldNumber {
			return bad("a number")
		}
		e.value = f.n.value(Path{})
		e.values++
	case "sv":
		if f.kind != fieldString {
			return bad("a string")
		}
		e.value = Value{Kind: KindString, Str: f.s}
		e.values++
	case "bv":
		if f.kind != fieldBool {
			return bad("a boolean")
		}
		e.value = Value{Kind: KindBoolean, Bool: f.b}
		e.values++
	case "ov":
		if f.kind != fieldString {
			return bad(`an object link string "oid:iid"`)
		}
		oid, iid, err := parseObjlnk(f.s)
		if err != nil {
			return fmt.Errorf("%w: member \"ov\": %v", ErrMalformed, err)
		}
		e.value = Value{Kind: KindObjlnk, Str: formatObjlnk(oid, iid)}
		e.values++
	}
	return nil
}

// EncodeLwM2MJSON encodes values as LwM2M JSON (11543) in the LwM2M 1.0
// form, e.g. {"bn":"/3/0/","e":[{"n":"3","sv":"1.0"},{"n":"6/0","v":1}]}:
// base name as in EncodeSenMLJSON; integers, times and floats in "v"
// (floats with a '.' or an exponent; NaN and infinities refused), strings
// in "sv", booleans in "bv", object links in "ov", opaque in "sv" as base64
// (standard alphabet, padded, as LwM2M 1.0 says; it reads back as a string).
func EncodeLwM2MJSON(vs []Value) ([]byte, error) {
	if err := checkLeaves(vs); err != nil {
		return nil, err
	}
	base := commonBase(vs)
	out := append([]byte(`{"bn":`), appendJSONString(nil, senmlBaseName(base))...)
	out = append(out, `,"e":[`...)
	for i, v := range vs {
		if err := checkSenMLValue(v); err != nil {
			return nil, err
		}
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"n":`...)
		out = appendJSONString(out, relName(base, v.Path))
		out = append(out, ',')
		switch v.Kind {
		case KindString:
			out = appendJSONString(append(out, `"sv":`...), v.Str)
		case KindInteger, KindTime:
			out = strconv.AppendInt(append(out, `"v":`...), v.Int, 10)
		case KindFloat:
			if math.IsNaN(v.Float) || math.IsInf(v.Float, 0) {
				return nil, fmt.Errorf("%w: %s: float %v has no JSON form", ErrInvalidValue, v.Path, v.Float)
			}
			out = appendJSONFloat(append(out, `"v":`...), v.Float)
		case KindBoolean:
			out = strconv.AppendBool(append(out, `"bv":`...), v.Bool)
		case KindOpaque:
			out = appendJSONString(append(out, `"sv":`...), base64.StdEncoding.EncodeToString(v.Bytes))
		case KindObjlnk:
			oid, iid, _ := parseObjlnk(v.Str)
			out = appendJSONString(append(out, `"ov":`...), formatObjlnk(oid, iid))
		}
		out = append(out, '}')
	}
	return append(out, "]}"...), nil
}
