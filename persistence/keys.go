package persistence

import (
	"encoding/binary"
	"fmt"
)

// Key layout. Event and snapshot keys sort by stream, then sequence:
//
//	e/<kind>/<id>/<seq:8 bytes big-endian>   event
//	s/<kind>/<id>                            snapshot
//	a/<kind>/<id>                            active mark (empty value)
//
// The leading letter separates the key spaces so one scan never crosses them;
// registry keys (r/...) and blob chunks (b/...) live in their own spaces too.

// EventKey is the key of event seq of stream s.
func EventKey(s Stream, seq uint64) []byte {
	k := EventPrefix(s)
	return binary.BigEndian.AppendUint64(k, seq)
}

// EventPrefix is the common prefix of all event keys of s.
func EventPrefix(s Stream) []byte {
	k := make([]byte, 0, 4+len(s.Kind)+len(s.ID)+8)
	k = append(k, "e/"...)
	k = append(k, s.Kind...)
	k = append(k, '/')
	k = append(k, s.ID...)
	return append(k, '/')
}

// SnapshotKey is the key of s's snapshot.
func SnapshotKey(s Stream) []byte { return []byte("s/" + string(s.Kind) + "/" + s.ID) }

// ActivePrefix is the prefix of the active marks of kind.
func ActivePrefix(kind Kind) []byte { return []byte("a/" + string(kind) + "/") }

// ActiveKey is the key of s's active mark.
func ActiveKey(s Stream) []byte { return append(ActivePrefix(s.Kind), s.ID...) }

// ParseEventKey splits an event key back into stream and sequence number.
func ParseEventKey(k []byte) (Stream, uint64, error) {
	if len(k) < 2+2+1+1+8 || string(k[:2]) != "e/" || k[len(k)-9] != '/' {
		return Stream{}, 0, fmt.Errorf("%w: %q is not an event key", ErrInvalid, k)
	}
	body := k[2 : len(k)-9]
	for i, b := range body {
		if b == '/' {
			s := Stream{Kind: Kind(body[:i]), ID: string(body[i+1:])}
			if err := s.Validate(); err != nil {
				return Stream{}, 0, err
			}
			return s, binary.BigEndian.Uint64(k[len(k)-8:]), nil
		}
	}
	return Stream{}, 0, fmt.Errorf("%w: %q has no kind", ErrInvalid, k)
}
