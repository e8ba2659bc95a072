package pcp

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/otafleet/otafleet/messages"
)

// SegmentCount returns the number of segments of segmentSize bytes that a
// package of size bytes takes, ceil(size / segmentSize), as carried in the
// 0x14 notification. It returns 0 when there is nothing to send over PCP: a
// size of 0 or less, a segment size of 0, or a package that needs more than
// messages.PcpMaxSegments segments (larger than MaxPackageSize(segmentSize)). It does not
// check the segment size against messages.PcpMinSegmentSize and messages.PcpMaxSegmentSize.
func SegmentCount(size int64, segmentSize uint16) uint16 {
	if size <= 0 || segmentSize == 0 || size > MaxPackageSize(segmentSize) {
		return 0
	}
	ss := int64(segmentSize)
	return uint16((size + ss - 1) / ss)
}

// MaxPackageSize returns the largest package that PCP can carry in segments
// of segmentSize bytes: messages.PcpMaxSegments × segmentSize (32767500 bytes for the
// default 500).
func MaxPackageSize(segmentSize uint16) int64 {
	return messages.PcpMaxSegments * int64(segmentSize)
}

// SegmentRange returns where segment no of a package of size bytes lies:
// its offset and its length, segmentSize except for a shorter last segment.
// ok is false if the segment does not exist (no >= SegmentCount(size,
// segmentSize)); the 0x15 response is then messages.PcpResultNoSuchSegment.
func SegmentRange(size int64, segmentSize uint16, no uint16) (offset int64, n int, ok bool) {
	if no >= SegmentCount(size, segmentSize) {
		return 0, 0, false
	}
	offset = int64(no) * int64(segmentSize)
	return offset, int(min(int64(segmentSize), size-offset)), true
}

// CheckCode returns otafleet's check code for a package whose SHA-256 is
// sum: its first two bytes, big-endian (spec 4.8 [P]; rpc packageMessage).
// A package's legacy versionCheckCode, when given, is sent instead. Devices
// resume a download only when a new 0x14 brings the same version and check
// code, so a package re-uploaded under the same version starts over.
func CheckCode(sum [sha256.Size]byte) uint16 {
	return binary.BigEndian.Uint16(sum[:2])
}
