package pebblestore

import (
	"bytes"
	"encoding/binary"
)

// Keys of the store's own spaces (the journal's are in persistence/keys.go;
// the layout is in the package doc).
var (
	keyFormat = []byte("m/format")
	keySeal   = []byte("m/seal")
)

// Registry record prefixes.
var (
	prefixProduct     = []byte("r/p/")
	prefixDevice      = []byte("r/d/")
	prefixGroup       = []byte("r/g/")
	prefixPackage     = []byte("r/k/")
	prefixTask        = []byte("r/t/")
	prefixBlobHeader  = []byte("r/b/")
	prefixBlobWriting = []byte("r/w/")
	prefixProductDevs = []byte("r/i/d/")
	prefixProductPkgs = []byte("r/i/k/")
	prefixBlobChunk   = []byte("b/")
	prefixEvents      = []byte("e/")
	prefixSnapshots   = []byte("s/")
	prefixActive      = []byte("a/")
	prefixRegistry    = []byte("r/")
	prefixMeta        = []byte("m/")
	prefixSessions    = []byte("t/")
)

// Blob chunk value layout.
const (
	chunkIndexLen = 8
	chunkCRCLen   = 4
	maxChunkBytes = 1 << 20 // the largest chunk size a header may declare
)

// Record envelope types (persistence.EncodeEvent's Type) and the version
// this build writes.
const (
	recProduct    uint32 = 200
	recDevice     uint32 = 201
	recGroup      uint32 = 202
	recPackage    uint32 = 203
	recBlobHeader uint32 = 204
	recTask       uint32 = 205
	recSession    uint32 = 206
	recVersion    uint32 = 1
)

func join(prefix []byte, parts ...string) []byte {
	n := len(prefix)
	for _, p := range parts {
		n += len(p) + 1
	}
	k := make([]byte, 0, n)
	k = append(k, prefix...)
	for i, p := range parts {
		if i > 0 {
			k = append(k, '/')
		}
		k = append(k, p...)
	}
	return k
}

// indexPrefix is the prefix of the index entries of a product.
func indexPrefix(prefix []byte, product string) []byte {
	return append(join(prefix, product), '/')
}

// chunkPrefix is the prefix of blob id's chunks.
func chunkPrefix(id string) []byte { return append(join(prefixBlobChunk, id), '/') }

func chunkKey(id string, i uint64) []byte {
	return binary.BigEndian.AppendUint64(chunkPrefix(id), i)
}

// prefixEnd is the smallest key above every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// after is the smallest key above prefix+id (IDs hold no control
// characters, so id+"\x00" sorts right after id).
func afterID(prefix []byte, id string) []byte {
	if id == "" {
		return bytes.Clone(prefix)
	}
	return append(join(prefix, id), 0)
}
