package pcp

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/otafleet/otafleet/messages"
)

// ErrMalformed is wrapped by every error of this package: a frame or payload
// that breaks the layout of spec 4.2 and 4.5, or a value that cannot be
// encoded in it. The wrapping error says which field and which length.
var ErrMalformed = errors.New("pcp: malformed")

const (
	// StartMarker opens every frame.
	StartMarker uint16 = 0xFFFE
	// ProtocolVersion is the only valid version byte: high nibble 0
	// (reserved), low nibble 1 (the protocol version).
	ProtocolVersion byte = 0x01
	// HeaderLen is the size of the frame header: start marker, version,
	// code, checksum and data length.
	HeaderLen = 8
	// MaxDataLen is the largest data a frame can carry (its length is a WORD).
	MaxDataLen = 0xFFFF
)

// Frame is one PCP frame: the header fields that vary and the data. The
// start marker, checksum and data length are derived.
type Frame struct {
	Version byte // ProtocolVersion
	Code    messages.PcpCode
	Data    []byte
}

// malformed returns an error wrapping ErrMalformed.
func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// checkVersionByte checks a frame's version byte (spec 4.2).
func checkVersionByte(v byte) error {
	switch {
	case v>>4 != 0:
		return malformed("version byte 0x%02X: high nibble %d, reserved, must be 0", v, v>>4)
	case v&0x0F != 1:
		return malformed("version byte 0x%02X: protocol version %d, want 1", v, v&0x0F)
	}
	return nil
}

// Encode returns the bytes of f: start marker, version, code, checksum, data
// length, data. It fails if f.Version is not ProtocolVersion or f.Data is
// longer than MaxDataLen; it accepts any code.
func Encode(f Frame) ([]byte, error) {
	if err := checkVersionByte(f.Version); err != nil {
		return nil, err
	}
	if len(f.Data) > MaxDataLen {
		return nil, malformed("data of %d bytes, at most %d", len(f.Data), MaxDataLen)
	}
	return encode(f.Code, f.Data), nil
}

// encode builds a frame of version 1; len(data) <= MaxDataLen.
func encode(c messages.PcpCode, data []byte) []byte {
	b := make([]byte, HeaderLen+len(data))
	binary.BigEndian.PutUint16(b[0:], StartMarker)
	b[2] = ProtocolVersion
	b[3] = byte(c)
	binary.BigEndian.PutUint16(b[6:], uint16(len(data)))
	copy(b[HeaderLen:], data)
	binary.BigEndian.PutUint16(b[4:], CRC(b)) // bytes 4..5 are still zero
	return b
}

// Decode checks the frame b and returns its fields; f.Data is a copy (nil
// when empty). The checks, in order: at least HeaderLen bytes, start marker
// 0xFFFE, version byte 0x01, data length field equal to the bytes present,
// checksum. Every error wraps ErrMalformed. Decode accepts any message code
// (messages.PcpCode.Valid tells the defined ones) and never panics.
func Decode(b []byte) (Frame, error) {
	if len(b) < HeaderLen {
		return Frame{}, malformed("frame of %d bytes, shorter than the %d-byte header", len(b), HeaderLen)
	}
	if m := binary.BigEndian.Uint16(b); m != StartMarker {
		return Frame{}, malformed("start marker 0x%04X, want 0x%04X", m, StartMarker)
	}
	if err := checkVersionByte(b[2]); err != nil {
		return Frame{}, err
	}
	n, have := int(binary.BigEndian.Uint16(b[6:])), len(b)-HeaderLen
	switch {
	case n > have:
		return Frame{}, malformed("data length field says %d bytes, only %d follow the header (truncated)", n, have)
	case n < have:
		return Frame{}, malformed("data length field says %d bytes, %d follow the header (%d extra)", n, have, have-n)
	}
	if got, want := binary.BigEndian.Uint16(b[4:]), frameCRC(b); got != want {
		return Frame{}, malformed("checksum 0x%04X, want 0x%04X", got, want)
	}
	f := Frame{Version: b[2], Code: messages.PcpCode(b[3])}
	if n > 0 {
		f.Data = append([]byte(nil), b[HeaderLen:]...)
	}
	return f, nil
}

// IsPCP tells a PCP frame from business data on /19/0/0 (spec 4.7). It runs
// checks 3 to 7 of the spec in order and reports false at the first that
// fails: the first two bytes are 0xFFFE; the version byte is 0x01; the
// message code is defined (19 to 24); the checksum is correct; the data
// length equals len(b) - 8. A slice too short to hold the header is not PCP.
// Checks 1 and 2 (the product supports software upgrade, over PCP) are the
// caller's: bytes from a product without them are business data whatever
// they hold.
func IsPCP(b []byte) bool {
	return len(b) >= HeaderLen &&
		binary.BigEndian.Uint16(b) == StartMarker &&
		b[2] == ProtocolVersion &&
		messages.PcpCode(b[3]).Valid() &&
		binary.BigEndian.Uint16(b[4:]) == frameCRC(b) &&
		int(binary.BigEndian.Uint16(b[6:])) == len(b)-HeaderLen
}
