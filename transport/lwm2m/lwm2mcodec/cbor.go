package lwm2mcodec

import (
	"encoding/binary"
	"fmt"
	"math"
	"unicode/utf8"
)

// A minimal CBOR (RFC 8949) reader and writer, enough for SenML: the
// reader builds a small tree of the data items below, bounded in depth and
// never allocating more than the input could hold.

// maxCBORDepth bounds nesting (arrays, maps, tags) in SenML CBOR input.
// SenML needs 2 (an array of maps); unknown labels may hold a little more.
const maxCBORDepth = 16

// cborItemKind is the kind of a decoded CBOR data item.
type cborItemKind uint8

const (
	cborUint   cborItemKind = iota // u
	cborNegInt                     // -1-u
	cborBytes                      // b
	cborText                       // s
	cborArray                      // items
	cborMap                        // items: key, value, key, value...
	cborFloat                      // f
	cborBool                       // bl
	cborNull
	cborUndefined
	cborSimple // other simple values (u)
)

type cborItem struct {
	kind  cborItemKind
	u     uint64
	f     float64
	bl    bool
	s     string
	b     []byte
	items []cborItem
}

type cborReader struct {
	b   []byte
	off int
}

func (r *cborReader) errf(format string, args ...any) error {
	return fmt.Errorf("%w: SenML CBOR at offset %d: %s", ErrMalformed, r.off, fmt.Sprintf(format, args...))
}

// head reads an initial byte and its argument. indefinite is set for
// additional information 31 (the caller decides whether that is allowed).
func (r *cborReader) head() (major, ai byte, arg uint64, indefinite bool, err error) {
	if r.off >= len(r.b) {
		return 0, 0, 0, false, r.errf("unexpected end of input")
	}
	ib := r.b[r.off]
	r.off++
	major, ai = ib>>5, ib&0x1f
	switch {
	case ai < 24:
		return major, ai, uint64(ai), false, nil
	case ai <= 27:
		n := 1 << (ai - 24)
		if len(r.b)-r.off < n {
			return 0, 0, 0, false, r.errf("truncated argument")
		}
		for _, c := range r.b[r.off : r.off+n] {
			arg = arg<<8 | uint64(c)
		}
		r.off += n
		return major, ai, arg, false, nil
	case ai == 31:
		return major, ai, 0, true, nil
	default:
		return 0, 0, 0, false, r.errf("reserved additional information %d", ai)
	}
}

// item reads one data item.
func (r *cborReader) item(depth int) (cborItem, error) {
	if depth > maxCBORDepth {
		return cborItem{}, r.errf("nested deeper than %d", maxCBORDepth)
	}
	start := r.off
	major, ai, arg, indef, err := r.head()
	if err != nil {
		return cborItem{}, err
	}
	switch major {
	case 0, 1:
		if indef {
			return cborItem{}, r.errf("indefinite-length integer")
		}
		k := cborUint
		if major == 1 {
			k = cborNegInt
		}
		return cborItem{kind: k, u: arg}, nil
	case 2, 3:
		var buf []byte
		if !indef {
			if arg > uint64(len(r.b)-r.off) {
				return cborItem{}, r.errf("string of %d bytes past the end of input", arg)
			}
			buf = r.b[r.off : r.off+int(arg)]
			r.off += int(arg)
		} else {
			buf = []byte{}
			for {
				if r.off < len(r.b) && r.b[r.off] == 0xff {
					r.off++
					break
				}
				cm, _, n, ci, err := r.head()
				if err != nil {
					return cborItem{}, err
				}
				if cm != major || ci {
					return cborItem{}, r.errf("bad chunk in indefinite-length string")
				}
				if n > uint64(len(r.b)-r.off) {
					return cborItem{}, r.errf("string chunk of %d bytes past the end of input", n)
				}
				buf = append(buf, r.b[r.off:r.off+int(n)]...)
				r.off += int(n)
			}
		}
		if major == 2 {
			return cborItem{kind: cborBytes, b: append([]byte{}, buf...)}, nil
		}
		if !utf8.Valid(buf) {
			r.off = start
			return cborItem{}, r.errf("text string is not UTF-8")
		}
		return cborItem{kind: cborText, s: string(buf)}, nil
	case 4, 5:
		per := uint64(1)
		k := cborArray
		if major == 5 {
			per, k = 2, cborMap
		}
		it := cborItem{kind: k}
		if !indef {
			// Each item takes at least one byte: refuse counts the input
			// cannot hold before allocating.
			if arg > uint64(len(r.b)-r.off)/per {
				return cborItem{}, r.errf("%d elements past the end of input", arg)
			}
			n := int(arg * per)
			it.items = make([]cborItem, 0, n)
			for range n {
				c, err := r.item(depth + 1)
				if err != nil {
					return cborItem{}, err
				}
				it.items = append(it.items, c)
			}
			return it, nil
		}
		for {
			if r.off < len(r.b) && r.b[r.off] == 0xff {
				r.off++
				break
			}
			c, err := r.item(depth + 1)
			if err != nil {
				return cborItem{}, err
			}
			it.items = append(it.items, c)
		}
		if uint64(len(it.items))%per != 0 {
			return cborItem{}, r.errf("indefinite-length map with an odd number of items")
		}
		return it, nil
	case 6:
		if indef {
			return cborItem{}, r.errf("indefinite-length tag")
		}
		// Tags are transparent here (SenML defines none).
		return r.item(depth + 1)
	default: // 7
		if indef {
			return cborItem{}, r.errf("unexpected break")
		}
		switch ai {
		case 20, 21:
			return cborItem{kind: cborBool, bl: ai == 21}, nil
		case 22:
			return cborItem{kind: cborNull}, nil
		case 23:
			return cborItem{kind: cborUndefined}, nil
		case 24:
			if arg < 32 {
				return cborItem{}, r.errf("two-byte simple value %d", arg)
			}
			return cborItem{kind: cborSimple, u: arg}, nil
		case 25:
			return cborItem{kind: cborFloat, f: float16(uint16(arg))}, nil
		case 26:
			return cborItem{kind: cborFloat, f: float64(math.Float32frombits(uint32(arg)))}, nil
		case 27:
			return cborItem{kind: cborFloat, f: math.Float64frombits(arg)}, nil
		default:
			return cborItem{kind: cborSimple, u: arg}, nil
		}
	}
}

// float16 converts IEEE 754 half precision to float64 (RFC 8949 appendix D).
func float16(h uint16) float64 {
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	var v float64
	switch exp {
	case 0:
		v = math.Ldexp(mant, -24)
	case 31:
		if mant == 0 {
			v = math.Inf(1)
		} else {
			v = math.NaN()
		}
	default:
		v = math.Ldexp(mant+1024, exp-25)
	}
	if h&0x8000 != 0 {
		return -v
	}
	return v
}

// decodeCBOR decodes exactly one data item from b.
func decodeCBOR(b []byte) (cborItem, error) {
	r := cborReader{b: b}
	it, err := r.item(0)
	if err != nil {
		return cborItem{}, err
	}
	if r.off != len(b) {
		return cborItem{}, r.errf("%d bytes after the data item", len(b)-r.off)
	}
	return it, nil
}

// CBOR writing (definite lengths, shortest arguments).

func cborAppendHead(dst []byte, major byte, arg uint64) []byte {
	m := major << 5
	switch {
	case arg < 24:
		return append(dst, m|byte(arg))
	case arg <= math.MaxUint8:
		return append(dst, m|24, byte(arg))
	case arg <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, m|25), uint16(arg))
	case arg <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(dst, m|26), uint32(arg))
	default:
		return binary.BigEndian.AppendUint64(append(dst, m|27), arg)
	}
}

func cborAppendInt(dst []byte, i int64) []byte {
	if i >= 0 {
		return cborAppendHead(dst, 0, uint64(i))
	}
	return cborAppendHead(dst, 1, uint64(-1-i))
}

func cborAppendText(dst []byte, s string) []byte {
	return append(cborAppendHead(dst, 3, uint64(len(s))), s...)
}

func cborAppendBytes(dst []byte, b []byte) []byte {
	return append(cborAppendHead(dst, 2, uint64(len(b))), b...)
}

// cborAppendFloat writes f as a single-precision float when that is exact,
// else double precision.
func cborAppendFloat(dst []byte, f float64) []byte {
	if f32 := float32(f); float64(f32) == f {
		return binary.BigEndian.AppendUint32(append(dst, 0xfa), math.Float32bits(f32))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xfb), math.Float64bits(f))
}

func cborAppendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, 0xf5)
	}
	return append(dst, 0xf4)
}
