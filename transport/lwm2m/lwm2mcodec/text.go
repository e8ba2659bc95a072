package lwm2mcodec

import (
	"encoding/base64"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// EncodeText returns the text/plain (0) form of one value (LwM2M 1.1 Core
// 7.3): a string as is (UTF-8); an integer or time in decimal; a float in
// decimal without exponent (shortest form that reads back exactly); a
// boolean as "1" or "0"; an object link as "oid:iid"; opaque as base64
// (standard alphabet, padded). KindUnknown, non-UTF-8 strings and NaN or
// infinite floats are refused with ErrInvalidValue.
func EncodeText(v Value) ([]byte, error) {
	switch v.Kind {
	case KindString:
		if !utf8.ValidString(v.Str) {
			return nil, fmt.Errorf("%w: %s: string is not UTF-8", ErrInvalidValue, v.Path)
		}
		return []byte(v.Str), nil
	case KindInteger, KindTime:
		return strconv.AppendInt(nil, v.Int, 10), nil
	case KindFloat:
		if math.IsNaN(v.Float) || math.IsInf(v.Float, 0) {
			return nil, fmt.Errorf("%w: %s: float %v has no text form", ErrInvalidValue, v.Path, v.Float)
		}
		return strconv.AppendFloat(nil, v.Float, 'f', -1, 64), nil
	case KindBoolean:
		if v.Bool {
			return []byte("1"), nil
		}
		return []byte("0"), nil
	case KindObjlnk:
		oid, iid, err := parseObjlnk(v.Str)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidValue, v.Path, err)
		}
		return []byte(formatObjlnk(oid, iid)), nil
	case KindOpaque:
		return []byte(base64.StdEncoding.EncodeToString(v.Bytes)), nil
	default:
		return nil, fmt.Errorf("%w: %s: %s value has no text form (interpret it with Value.As first)", ErrInvalidValue, v.Path, v.Kind)
	}
}
