package persistence

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Key layout. Event and snapshot keys sort by stream, then sequence:
//
//	e/<kind>/<id>/<seq:8 bytes big-endian>   event
//	s/<kind>/<id>                            snapshot
//	a/<kind>/<id>                            active mark (empty value)
//	k/<kind>/<id>/<key>                      record of the state area
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

// RecordPrefix is the common prefix of the keys of s's records.
func RecordPrefix(s Stream) []byte {
	k := make([]byte, 0, 4+len(s.Kind)+len(s.ID)+MaxRecordKeyLen)
	k = append(k, "k/"...)
	k = append(k, s.Kind...)
	k = append(k, '/')
	k = append(k, s.ID...)
	return append(k, '/')
}

// RecordKey is the stored key of s's record key.
func RecordKey(s Stream, key []byte) []byte { return append(RecordPrefix(s), key...) }

// ParseRecordKey splits a record's stored key into its stream and key.
func ParseRecordKey(k []byte) (Stream, []byte, error) {
	if len(k) < 2 || string(k[:2]) != "k/" {
		return Stream{}, nil, fmt.Errorf("%w: %q is not a record key", ErrInvalid, k)
	}
	body := k[2:]
	i := bytes.IndexByte(body, '/')
	if i < 0 {
		return Stream{}, nil, fmt.Errorf("%w: record key %q has no kind", ErrInvalid, k)
	}
	j := bytes.IndexByte(body[i+1:], '/')
	if j < 0 {
		return Stream{}, nil, fmt.Errorf("%w: record key %q has no ID", ErrInvalid, k)
	}
	s := Stream{Kind: Kind(body[:i]), ID: string(body[i+1 : i+1+j])}
	if err := s.Validate(); err != nil {
		return Stream{}, nil, err
	}
	key := body[i+1+j+1:]
	if err := (Record{Key: key}).Validate(); err != nil {
		return Stream{}, nil, err
	}
	return s, key, nil
}

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
