package pcp

import (
	"crypto/sha256"
	"testing"

	"github.com/otafleet/otafleet/messages"
)

func TestSegmentCount(t *testing.T) {
	for _, tc := range []struct {
		size int64
		ss   uint16
		want uint16
	}{
		{16, 500, 1},
		{500, 500, 1},
		{501, 500, 2},
		{1000, 500, 2},
		{1001, 500, 3},
		{3_000_000, 500, 6000},
		{1, 32, 1},
		{64, 32, 2},
		{65, 32, 3},
		{MaxPackageSize(500), 500, 0xFFFF},
		{MaxPackageSize(500) + 1, 500, 0}, // 65536 segments: does not fit
		{1 << 30, 500, 0},                 // 1 GiB
		{0xFFFF, 1, 0xFFFF},
		{0x10000, 1, 0},
		{0xFFFF * 0xFFFF, 0xFFFF, 0xFFFF},
		{0, 500, 0},
		{-1, 500, 0},
		{100, 0, 0},
		{-1 << 63, 500, 0},
		{1<<63 - 1, 0xFFFF, 0},
	} {
		if got := SegmentCount(tc.size, tc.ss); got != tc.want {
			t.Errorf("SegmentCount(%d, %d) = %d, want %d", tc.size, tc.ss, got, tc.want)
		}
	}
	if got := MaxPackageSize(messages.PcpDefaultSegmentSize); got != 32_767_500 {
		t.Errorf("MaxPackageSize(500) = %d", got)
	}
}

func TestSegmentRange(t *testing.T) {
	type r struct {
		off int64
		n   int
		ok  bool
	}
	for _, tc := range []struct {
		size int64
		ss   uint16
		no   uint16
		want r
	}{
		{1001, 500, 0, r{0, 500, true}},
		{1001, 500, 1, r{500, 500, true}},
		{1001, 500, 2, r{1000, 1, true}},
		{1001, 500, 3, r{}},
		{1000, 500, 1, r{500, 500, true}},
		{1000, 500, 2, r{}},
		{16, 500, 0, r{0, 16, true}},
		{0, 500, 0, r{}},
		{100, 0, 0, r{}},
		{MaxPackageSize(500), 500, 0xFFFE, r{0xFFFE * 500, 500, true}},
		{MaxPackageSize(500) + 1, 500, 0, r{}},
	} {
		off, n, ok := SegmentRange(tc.size, tc.ss, tc.no)
		if got := (r{off, n, ok}); got != tc.want {
			t.Errorf("SegmentRange(%d, %d, %d) = %+v, want %+v", tc.size, tc.ss, tc.no, got, tc.want)
		}
	}
	// The segments tile the package exactly.
	for _, size := range []int64{1, 31, 32, 33, 499, 500, 501, 12345} {
		for _, ss := range []uint16{32, 100, 500} {
			var next int64
			for no := range SegmentCount(size, ss) {
				off, n, ok := SegmentRange(size, ss, no)
				if !ok || off != next || n <= 0 || n > int(ss) {
					t.Fatalf("SegmentRange(%d, %d, %d) = %d, %d, %v", size, ss, no, off, n, ok)
				}
				next = off + int64(n)
			}
			if next != size {
				t.Errorf("size %d, segments of %d: tiled %d bytes", size, ss, next)
			}
		}
	}
}

func TestCheckCode(t *testing.T) {
	sum := sha256.Sum256([]byte("HELLO, IoT SOTA!"))
	if got, want := CheckCode(sum), uint16(sum[0])<<8|uint16(sum[1]); got != want {
		t.Errorf("CheckCode = 0x%04X, want 0x%04X", got, want)
	}
	var s [32]byte
	s[0], s[1], s[2] = 0x31, 0x32, 0xFF
	if got := CheckCode(s); got != 0x3132 {
		t.Errorf("CheckCode(31 32 FF ...) = 0x%04X, want 0x3132", got)
	}
}
