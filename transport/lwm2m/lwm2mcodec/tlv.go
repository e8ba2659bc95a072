package lwm2mcodec

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
)

// TLVType is the identifier type in bits 7-6 of a TLV type byte.
type TLVType uint8

// TLV identifier types (OMA-TS-LightweightM2M-V1_0 6.4.3).
const (
	TLVObjectInstance   TLVType = 0 // value: resource TLVs
	TLVResourceInstance TLVType = 1 // value: the resource instance's value
	TLVMultipleResource TLVType = 2 // value: resource instance TLVs
	TLVResourceValue    TLVType = 3 // value: the resource's value
)

var tlvTypeNames = [...]string{"object instance", "resource instance", "multiple resource", "resource"}

func (t TLVType) String() string { return tlvTypeNames[t&3] }

// MaxTLVLength is the largest value length a TLV can declare (24-bit
// length field).
const MaxTLVLength = 1<<24 - 1

// TLV is one decoded TLV: its identifier type, identifier and value bytes
// (for object instances and multiple resources, the nested TLVs).
type TLV struct {
	Type  TLVType
	ID    uint16
	Value []byte
}

// ParseTLVs splits b into consecutive TLVs, with no interpretation of their
// values (the building block of DecodeTLV). Value slices alias b. A header
// or value running past the end of b is an error wrapping ErrMalformed, so
// trailing bytes that do not form a whole TLV are refused too. Every type
// byte is well formed; bits 2-0 are ignored when a length field follows, as
// the TS says.
func ParseTLVs(b []byte) ([]TLV, error) { return parseTLVs(b, 0) }

func parseTLVs(b []byte, base int) ([]TLV, error) {
	var out []TLV
	for off := 0; off < len(b); {
		t, n, err := parseTLV(b[off:], base+off)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
		off += n
	}
	return out, nil
}

// parseTLV reads one TLV from the start of b; at is b's offset in the
// payload, for error messages.
func parseTLV(b []byte, at int) (TLV, int, error) {
	trunc := func(what string, need int) (TLV, int, error) {
		return TLV{}, 0, fmt.Errorf("%w: TLV at offset %d: truncated %s: need %d bytes, have %d", ErrMalformed, at, what, need, len(b))
	}
	typ := b[0]
	t := TLV{Type: TLVType(typ >> 6)}
	idLen := 1
	if typ&0x20 != 0 {
		idLen = 2
	}
	lenLen := int(typ>>3) & 3
	hdr := 1 + idLen + lenLen
	if len(b) < hdr {
		return trunc("header", hdr)
	}
	if idLen == 1 {
		t.ID = uint16(b[1])
	} else {
		t.ID = binary.BigEndian.Uint16(b[1:])
	}
	n := int(typ & 7)
	if lenLen > 0 {
		n = 0
		for _, c := range b[1+idLen : hdr] {
			n = n<<8 | int(c)
		}
	}
	if len(b)-hdr < n {
		return trunc(t.Type.String()+" value", hdr+n)
	}
	t.Value = b[hdr : hdr+n : hdr+n]
	return t, hdr + n, nil
}

// AppendTLV appends one TLV with the shortest identifier and length
// encodings. A value longer than MaxTLVLength is an error wrapping
// ErrInvalidValue.
func AppendTLV(dst []byte, typ TLVType, id uint16, value []byte) ([]byte, error) {
	n := len(value)
	if n > MaxTLVLength {
		return dst, fmt.Errorf("%w: TLV value of %d bytes exceeds %d", ErrInvalidValue, n, MaxTLVLength)
	}
	b := byte(typ&3) << 6
	if id > 0xff {
		b |= 0x20
	}
	switch {
	case n <= 7:
		b |= byte(n)
	case n <= 0xff:
		b |= 1 << 3
	case n <= 0xffff:
		b |= 2 << 3
	default:
		b |= 3 << 3
	}
	dst = append(dst, b)
	if id > 0xff {
		dst = binary.BigEndian.AppendUint16(dst, id)
	} else {
		dst = append(dst, byte(id))
	}
	switch {
	case n <= 7:
	case n <= 0xff:
		dst = append(dst, byte(n))
	case n <= 0xffff:
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, value...), nil
}

// DecodeTLV decodes a TLV payload read at req (which needs an object).
// TLV identifiers are relative to req; the layouts accepted at each level
// (a TLV whose identifier contradicts req is malformed):
//
//	/o        object instance TLVs, each holding resource TLVs; also bare
//	          resource TLVs, taken as instance 0 (clients with a single
//	          instance send them; Leshan reads them the same way)
//	/o/i      resource and multiple-resource TLVs, or one object instance TLV
//	          with identifier i holding them
//	/o/i/r    a resource TLV or a multiple-resource TLV with identifier r (or
//	          the same wrapped in object instance i), or bare resource
//	          instance TLVs
//	/o/i/r/ri a resource instance TLV with identifier ri, or one wrapped in
//	          multiple resource r (and object instance i)
//
// Leaves come out as KindUnknown values with copies of the raw bytes.
// Nesting is at most three deep by construction (instance, multiple
// resource, resource instance): anything nested elsewhere is malformed.
func DecodeTLV(req Path, payload []byte) ([]Value, error) {
	if !req.Valid() || req.Object < 0 {
		return nil, fmt.Errorf("%w: TLV needs a request path with an object, not %v", ErrInvalidPath, req)
	}
	top, err := parseTLVs(payload, 0)
	if err != nil {
		return nil, err
	}
	d := tlvDecoder{req: req}
	for _, t := range top {
		if err := d.top(t); err != nil {
			return nil, err
		}
	}
	return d.out, nil
}

type tlvDecoder struct {
	req Path
	out []Value
}

func (d *tlvDecoder) mismatch(t TLV, want int32, what string) error {
	return fmt.Errorf("%w: TLV %s %d where request path %s names %s %d", ErrMalformed, t.Type, t.ID, d.req, what, want)
}

func (d *tlvDecoder) emit(p Path, v []byte) {
	d.out = append(d.out, Value{Path: p, Kind: KindUnknown, Bytes: bytes.Clone(v)})
}

func (d *tlvDecoder) top(t TLV) error {
	req := d.req
	switch t.Type {
	case TLVObjectInstance:
		if req.Instance >= 0 && int32(t.ID) != req.Instance {
			return d.mismatch(t, req.Instance, "instance")
		}
		children, err := parseTLVs(t.Value, 0)
		if err != nil {
			return fmt.Errorf("in object instance %d: %w", t.ID, err)
		}
		for _, c := range children {
			if c.Type != TLVResourceValue && c.Type != TLVMultipleResource {
				return fmt.Errorf("%w: TLV %s %d inside object instance %d", ErrMalformed, c.Type, c.ID, t.ID)
			}
			if err := d.resource(InstancePath(req.Object, int32(t.ID)), c); err != nil {
				return err
			}
		}
		return nil
	case TLVResourceValue, TLVMultipleResource:
		inst := req.Instance
		if inst < 0 {
			inst = 0
		}
		return d.resource(InstancePath(req.Object, inst), t)
	default: // TLVResourceInstance
		if req.Resource < 0 {
			return fmt.Errorf("%w: bare TLV resource instance %d needs a request path naming its resource, not %s", ErrMalformed, t.ID, req)
		}
		if req.ResourceInstance >= 0 && int32(t.ID) != req.ResourceInstance {
			return d.mismatch(t, req.ResourceInstance, "resource instance")
		}
		d.emit(ResourceInstancePath(req.Object, req.Instance, req.Resource, int32(t.ID)), t.Value)
		return nil
	}
}

// resource decodes a resource or multiple-resource TLV in instance inst.
func (d *tlvDecoder) resource(inst Path, t TLV) error {
	req := d.req
	if req.Resource >= 0 && int32(t.ID) != req.Resource {
		return d.mismatch(t, req.Resource, "resource")
	}
	r := ResourcePath(inst.Object, inst.Instance, int32(t.ID))
	if t.Type == TLVResourceValue {
		if req.ResourceInstance >= 0 {
			return fmt.Errorf("%w: TLV single resource %d where request path %s names a resource instance", ErrMalformed, t.ID, req)
		}
		d.emit(r, t.Value)
		return nil
	}
	children, err := parseTLVs(t.Value, 0)
	if err != nil {
		return fmt.Errorf("in multiple resource %d: %w", t.ID, err)
	}
	for _, c := range children {
		if c.Type != TLVResourceInstance {
			return fmt.Errorf("%w: TLV %s %d inside multiple resource %d", ErrMalformed, c.Type, c.ID, t.ID)
		}
		if req.ResourceInstance >= 0 && int32(c.ID) != req.ResourceInstance {
			return d.mismatch(c, req.ResourceInstance, "resource instance")
		}
		d.emit(ResourceInstancePath(r.Object, r.Instance, r.Resource, int32(c.ID)), c.Value)
	}
	return nil
}

// EncodeTLV encodes values of one object as TLV in the layout of a response
// to (or a Write on) their common level: resources of a single instance
// come out bare (resource TLVs; resource instances wrapped in their multiple
// resource), values of several instances come out in object instance TLVs.
// Decode them with the common path (EncodeTLVFor chooses the level
// explicitly). Values of several objects cannot share a TLV payload.
func EncodeTLV(vs []Value) ([]byte, error) {
	if len(vs) == 0 {
		return []byte{}, nil
	}
	if err := checkLeaves(vs); err != nil {
		return nil, err
	}
	req := InstancePath(vs[0].Path.Object, vs[0].Path.Instance)
	for _, v := range vs[1:] {
		if v.Path.Object != req.Object {
			return nil, fmt.Errorf("%w: TLV cannot hold values of objects %d and %d", ErrInvalidValue, req.Object, v.Path.Object)
		}
		if v.Path.Instance != req.Instance {
			req = ObjectPath(req.Object)
		}
	}
	return EncodeTLVFor(req, vs)
}

// EncodeTLVFor encodes values as a response to a Read of req (or the body of
// a Write on req): for /o, object instance TLVs holding resource TLVs; for
// /o/i and /o/i/r, resource TLVs with resource instances wrapped in
// multiple-resource TLVs; for /o/i/r/ri, bare resource instance TLVs. Every
// value must lie under req. Consecutive values of one instance (one
// multiple resource) share a wrapper; the order of values is kept.
//
// Values are encoded by kind: string as UTF-8; integer and time in the
// shortest of 1, 2, 4 or 8 bytes; float in 4 bytes when float32 holds it
// exactly, else 8; boolean as one byte 0/1; object link as 4 bytes; opaque
// and KindUnknown as their bytes.
func EncodeTLVFor(req Path, vs []Value) ([]byte, error) {
	if !req.Valid() || req.Object < 0 {
		return nil, fmt.Errorf("%w: TLV needs a request path with an object, not %v", ErrInvalidPath, req)
	}
	if err := checkLeaves(vs); err != nil {
		return nil, err
	}
	for _, v := range vs {
		if !req.Contains(v.Path) {
			return nil, fmt.Errorf("%w: value path %s is not under %s", ErrInvalidPath, v.Path, req)
		}
	}
	switch req.Depth() {
	case 1:
		var out []byte
		for i := 0; i < len(vs); {
			j := i + 1
			for j < len(vs) && vs[j].Path.Instance == vs[i].Path.Instance {
				j++
			}
			inner, err := encodeTLVResources(vs[i:j])
			if err != nil {
				return nil, err
			}
			if out, err = AppendTLV(out, TLVObjectInstance, uint16(vs[i].Path.Instance), inner); err != nil {
				return nil, err
			}
			i = j
		}
		return nonNil(out), nil
	case 4:
		var out []byte
		for _, v := range vs {
			b, err := tlvValue(v)
			if err != nil {
				return nil, err
			}
			if out, err = AppendTLV(out, TLVResourceInstance, uint16(v.Path.ResourceInstance), b); err != nil {
				return nil, err
			}
		}
		return nonNil(out), nil
	default:
		out, err := encodeTLVResources(vs)
		return nonNil(out), err
	}
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// encodeTLVResources encodes values of one instance as resource TLVs.
func encodeTLVResources(vs []Value) ([]byte, error) {
	var out []byte
	for i := 0; i < len(vs); {
		v := vs[i]
		if v.Path.ResourceInstance < 0 {
			b, err := tlvValue(v)
			if err != nil {
				return nil, err
			}
			if out, err = AppendTLV(out, TLVResourceValue, uint16(v.Path.Resource), b); err != nil {
				return nil, err
			}
			i++
			continue
		}
		var inner []byte
		j := i
		for ; j < len(vs) && vs[j].Path.Resource == v.Path.Resource && vs[j].Path.ResourceInstance >= 0; j++ {
			b, err := tlvValue(vs[j])
			if err != nil {
				return nil, err
			}
			if inner, err = AppendTLV(inner, TLVResourceInstance, uint16(vs[j].Path.ResourceInstance), b); err != nil {
				return nil, err
			}
		}
		var err error
		if out, err = AppendTLV(out, TLVMultipleResource, uint16(v.Path.Resource), inner); err != nil {
			return nil, err
		}
		i = j
	}
	return out, nil
}

// tlvValue returns the TLV value bytes of v.
func tlvValue(v Value) ([]byte, error) {
	switch v.Kind {
	case KindUnknown, KindOpaque:
		return v.Bytes, nil
	case KindString:
		return []byte(v.Str), nil
	case KindInteger, KindTime:
		return tlvInt(v.Int), nil
	case KindFloat:
		if f32 := float32(v.Float); float64(f32) == v.Float {
			return binary.BigEndian.AppendUint32(nil, math.Float32bits(f32)), nil
		}
		return binary.BigEndian.AppendUint64(nil, math.Float64bits(v.Float)), nil
	case KindBoolean:
		if v.Bool {
			return []byte{1}, nil
		}
		return []byte{0}, nil
	case KindObjlnk:
		oid, iid, err := parseObjlnk(v.Str)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidValue, v.Path, err)
		}
		return []byte{byte(oid >> 8), byte(oid), byte(iid >> 8), byte(iid)}, nil
	default:
		return nil, fmt.Errorf("%w: %s: kind %s", ErrInvalidValue, v.Path, v.Kind)
	}
}

// tlvInt returns i in the shortest of 1, 2, 4 or 8 bytes, big-endian two's
// complement.
func tlvInt(i int64) []byte {
	switch {
	case i >= math.MinInt8 && i <= math.MaxInt8:
		return []byte{byte(i)}
	case i >= math.MinInt16 && i <= math.MaxInt16:
		return binary.BigEndian.AppendUint16(nil, uint16(i))
	case i >= math.MinInt32 && i <= math.MaxInt32:
		return binary.BigEndian.AppendUint32(nil, uint32(i))
	default:
		return binary.BigEndian.AppendUint64(nil, uint64(i))
	}
}
