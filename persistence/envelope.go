package persistence

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Envelope encoding of an event or snapshot value:
//
//	+--------+------------+---------------+---------------+-----------+---------+
//	| format | crc32c (4) | type (uvarint)| ver (uvarint) | at (varint)| payload |
//	+--------+------------+---------------+---------------+-----------+---------+
//
// format is envelopeFormat (1); the CRC (Castagnoli, little-endian) covers
// everything after it. A value that is too short, has another format byte or
// a wrong CRC is corrupt.
const envelopeFormat = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// EncodeEvent returns the stored value of e (Seq is in the key, not here).
func EncodeEvent(e Event) []byte {
	b := make([]byte, 5, 5+3*binary.MaxVarintLen64+len(e.Payload))
	b[0] = envelopeFormat
	b = binary.AppendUvarint(b, uint64(e.Type))
	b = binary.AppendUvarint(b, uint64(e.Version))
	b = binary.AppendVarint(b, e.At)
	b = append(b, e.Payload...)
	binary.LittleEndian.PutUint32(b[1:5], crc32.Checksum(b[5:], castagnoli))
	return b
}

// DecodeEvent parses a stored value; seq comes from the key. The payload
// aliases v. Errors say what is wrong; callers wrap them in a CorruptError
// with the key.
func DecodeEvent(seq uint64, v []byte) (Event, error) {
	if len(v) < 5 {
		return Event{}, fmt.Errorf("value of %d bytes is shorter than the envelope header", len(v))
	}
	if v[0] != envelopeFormat {
		return Event{}, fmt.Errorf("unknown envelope format %d", v[0])
	}
	if got, want := crc32.Checksum(v[5:], castagnoli), binary.LittleEndian.Uint32(v[1:5]); got != want {
		return Event{}, fmt.Errorf("checksum mismatch (stored %08x, computed %08x)", want, got)
	}
	rest := v[5:]
	typ, n := binary.Uvarint(rest)
	if n <= 0 || typ > 1<<32-1 {
		return Event{}, fmt.Errorf("bad type field")
	}
	rest = rest[n:]
	ver, n := binary.Uvarint(rest)
	if n <= 0 || ver > 1<<32-1 {
		return Event{}, fmt.Errorf("bad version field")
	}
	rest = rest[n:]
	at, n := binary.Varint(rest)
	if n <= 0 {
		return Event{}, fmt.Errorf("bad time field")
	}
	return Event{Seq: seq, Type: uint32(typ), Version: uint32(ver), At: at, Payload: rest[n:]}, nil
}

// EncodeSnapshot returns the stored value of snap.
func EncodeSnapshot(snap Snapshot) []byte {
	v := EncodeEvent(Event{Type: snap.Type, Version: snap.Version, At: int64(snap.Seq), Payload: snap.Payload})
	return v
}

// DecodeSnapshot parses a stored snapshot value.
func DecodeSnapshot(v []byte) (Snapshot, error) {
	e, err := DecodeEvent(0, v)
	if err != nil {
		return Snapshot{}, err
	}
	if e.At < 0 {
		return Snapshot{}, fmt.Errorf("negative snapshot sequence %d", e.At)
	}
	return Snapshot{Seq: uint64(e.At), Type: e.Type, Version: e.Version, Payload: e.Payload}, nil
}

// EncodeRecord returns the stored value of r: an event envelope with time 0.
func EncodeRecord(r Record) []byte {
	return EncodeEvent(Event{Type: r.Type, Version: r.Version, Payload: r.Payload})
}

// DecodeRecord parses a stored record value; key comes from the stored key.
// The payload aliases v.
func DecodeRecord(key, v []byte) (Record, error) {
	e, err := DecodeEvent(0, v)
	if err != nil {
		return Record{}, err
	}
	if e.At != 0 {
		return Record{}, fmt.Errorf("record with time field %d", e.At)
	}
	return Record{Key: key, Type: e.Type, Version: e.Version, Payload: e.Payload}, nil
}
