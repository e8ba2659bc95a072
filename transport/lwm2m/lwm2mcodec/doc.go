// Package lwm2mcodec holds the LwM2M content-format codecs: pure functions
// from payload bytes to resource values and back, with no I/O and no clock.
// The LwM2M endpoint decodes what devices answer to Read and Notify (spec
// section 3 and project decision 7: clients answer in any of six formats),
// and simulated devices encode with the same code.
//
// # Values and paths
//
// A Path is /object[/instance[/resource[/resource-instance]]] with -1 for
// absent components. A Value is one resource (instance) value: its path,
// its Kind and the field of that kind. Decode(cf, requestPath, payload)
// returns the leaf values of a payload with full paths; StringAt and IntAt
// read the resources the engine needs (/3/0/3 firmware version; /4/0/2
// RSRP, /4/0/8 cell ID, /4/0/11 SINR, /5/0/3 state, /5/0/5 update result)
// whatever the format, through Value.As, which applies a resource type to
// untyped data (TLV bytes, text). Decoding reports what the device sent: a
// missing or nonsensical radio value (a positive "dBm") is the engine's to
// classify.
//
// # Formats (CoAP Content-Format numbers)
//
// text/plain (0): the value of one resource as UTF-8 text; numbers in
// decimal, booleans "0"/"1", object links "oid:iid", opaque as base64.
// Decode gives a KindString; Value.As parses it.
//
// opaque (42): the raw bytes of one resource (KindOpaque).
//
// TLV (11542; 1542 accepted as the pre-registration alias), LwM2M 1.0 Core
// 6.4.3. Each TLV is a type byte, an identifier, an optional length and
// the value:
//
//	  7   6   5   4   3   2   1   0
//	+-------+---+-------+-----------+
//	| type  |id | len   | length    |   type: 00 object instance
//	|       |len| type  | (if len   |         01 resource instance
//	|       |   |       |  type 00) |         10 multiple resource
//	+-------+---+-------+-----------+         11 resource with value
//	| identifier: 8 bits (id len 0) or 16 bits (id len 1)  |
//	+-------------------------------------------------------+
//	| length: none (len type 00: bits 2-0), 8, 16 or 24 bits |
//	+-------------------------------------------------------+
//	| value: length bytes                                   |
//	+-------------------------------------------------------+
//
// Object instances hold resource and multiple-resource TLVs; multiple
// resources hold resource instance TLVs; the others hold a value. TLV has
// no types: integers (and times) are 1, 2, 4 or 8 bytes of big-endian two's
// complement, floats 4 or 8 bytes of IEEE 754, booleans one byte, strings
// UTF-8, object links two 16-bit IDs. So TLV leaves decode to KindUnknown
// with the raw bytes, and IntAt/StringAt/Value.As interpret them. The
// identifiers are relative to the request path; DecodeTLV lists the
// layouts accepted at each level. Nesting is at most instance, multiple
// resource, resource instance; truncated TLVs, trailing bytes and TLVs in
// the wrong place are refused with errors wrapping ErrMalformed. For
// example, resource 3 of /3/0 holding "1.0":
//
//	C3 03 31 2E 30     11 0 00 011: resource, 8-bit id 3, length 3, "1.0"
//
// SenML JSON (110) and SenML CBOR (112), LwM2M 1.1 Core 7.4.4-7.4.5 with
// RFC 8428: an array of records; the base name "bn" (kept for the records
// that follow) concatenated with the name "n" is the path; the value is one
// of "v" (number), "vs" (string), "vb" (boolean), "vd" (opaque: base64url
// in JSON, a byte string in CBOR) and "vlo" (object link, LwM2M's
// extension). CBOR uses RFC 8428's integer labels (bver -1, bn -2, bt -3,
// bu -4, bv -5, bs -6, n 0, u 1, v 2, vs 3, vb 4, s 5, t 6, ut 7, vd 8) and
// the text label "vlo". Times, units and sums are ignored; "bv" is added to
// "v". This package reads and writes CBOR itself (a small, bounded reader
// for exactly what SenML needs), so the module gains no dependency.
//
// LwM2M JSON (11543; 1543 accepted as the alias), LwM2M 1.0 Core 6.4.4:
// {"bn":"/3/0/","e":[{"n":"3","sv":"1.0"},{"n":"2","v":-95}]} with values
// "v", "sv", "bv" and "ov"; names relative to "bn", or to the request path
// when "bn" is absent.
//
// CoRE link format (40), RFC 6690: the Register and Update payloads.
// ParseLinkFormat and FormatLinks read and write links; Objects lists the
// objects and instances advertised with their "ver" and the alternate path
// of the root link (rt="oma.lwm2m"); ContentFormats reads the root link's
// "ct".
//
// # Errors
//
// Every error wraps ErrMalformed (bad payload), ErrInvalidPath,
// ErrInvalidValue (an encoder cannot represent a value) or
// ErrUnsupportedFormat. No decoder panics on any input (each is fuzzed).
package lwm2mcodec
