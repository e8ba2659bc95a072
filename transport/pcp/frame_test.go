package pcp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/otafleet/otafleet/messages"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCRC(t *testing.T) {
	if got := CRC([]byte("123456789")); got != 0xB955 {
		t.Errorf("CRC(123456789) = 0x%04X, want 0xB955", got)
	}
	if got := CRC(nil); got != 0 {
		t.Errorf("CRC(nil) = 0x%04X, want 0", got)
	}
	for i, want := range map[int]uint16{0: 0, 1: 0x1021, 16: 0x1231, 255: 0x1EF0} {
		if crcTable[i] != want {
			t.Errorf("table[%d] = 0x%04X, want 0x%04X", i, crcTable[i], want)
		}
	}
	// CRC is over the frame as given: the checksum field counts.
	f := unhex(t, "FFFE01134C9A0000")
	if CRC(f) == 0x4C9A {
		t.Errorf("CRC over a frame with its checksum set gave the checksum")
	}
	if got := frameCRC(f); got != 0x4C9A {
		t.Errorf("frameCRC = 0x%04X, want 0x4C9A", got)
	}
	if !bytes.Equal(f, unhex(t, "FFFE01134C9A0000")) {
		t.Errorf("frameCRC changed its input")
	}
}

func TestEncodeDecodeFrame(t *testing.T) {
	for _, n := range []int{0, 1, 17, 500, MaxDataLen} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i * 7)
		}
		for c := messages.PcpCode(0); c < 0x20; c++ {
			b, err := Encode(Frame{Version: ProtocolVersion, Code: c, Data: data})
			if err != nil {
				t.Fatalf("Encode(code 0x%02X, %d bytes): %v", byte(c), n, err)
			}
			if len(b) != HeaderLen+n {
				t.Fatalf("len = %d, want %d", len(b), HeaderLen+n)
			}
			f, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if f.Version != ProtocolVersion || f.Code != c || !bytes.Equal(f.Data, data) {
				t.Fatalf("Decode(Encode(code 0x%02X, %d bytes)) = %v, %v, %d bytes", byte(c), n, f.Version, f.Code, len(f.Data))
			}
			if n == 0 && f.Data != nil {
				t.Errorf("empty data decoded as %#v, want nil", f.Data)
			}
			if IsPCP(b) != c.Valid() {
				t.Errorf("IsPCP(code 0x%02X) = %v", byte(c), !c.Valid())
			}
		}
	}
	// Decode copies: changing the input leaves the frame alone.
	b := EncodeUpgradeResultAck(UpgradeResultAck{Result: 0x80})
	f, _ := Decode(b)
	b[8] = 0
	if f.Data[0] != 0x80 {
		t.Errorf("Decode aliases its input")
	}
}

func TestEncodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Frame
		want string
	}{
		{"zero version", Frame{Code: messages.PcpCodeExecuteUpgrade}, "version byte 0x00: protocol version 0, want 1"},
		{"version 2", Frame{Version: 2, Code: messages.PcpCodeExecuteUpgrade}, "protocol version 2, want 1"},
		{"reserved nibble", Frame{Version: 0x11, Code: messages.PcpCodeExecuteUpgrade}, "high nibble 1, reserved, must be 0"},
		{"too long", Frame{Version: 1, Code: messages.PcpCodeRequestSegment, Data: make([]byte, MaxDataLen+1)}, "data of 65536 bytes, at most 65535"},
	} {
		b, err := Encode(tc.f)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Encode = %X, %v; want an error containing %q", tc.name, b, err, tc.want)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	good := "FFFE0118C7D200110056312E30000000000000000000000000"
	for _, tc := range []struct {
		name, frame, want string
	}{
		{"empty", "", "frame of 0 bytes, shorter than the 8-byte header"},
		{"7 bytes", "FFFE01134C9A00", "frame of 7 bytes, shorter than the 8-byte header"},
		{"marker", "FFFF01134C9A0000", "start marker 0xFFFF, want 0xFFFE"},
		{"marker swapped", "FEFF01134C9A0000", "start marker 0xFEFF, want 0xFFFE"},
		{"version 2", "FFFE02134C9A0000", "version byte 0x02: protocol version 2, want 1"},
		{"version 0", "FFFE00134C9A0000", "version byte 0x00: protocol version 0, want 1"},
		{"reserved nibble", "FFFE11134C9A0000", "version byte 0x11: high nibble 1, reserved, must be 0"},
		{"truncated", good[:len(good)-2], "data length field says 17 bytes, only 16 follow the header (truncated)"},
		{"header only", "FFFE0118C7D20011", "data length field says 17 bytes, only 0 follow the header (truncated)"},
		{"extra", good + "00", "data length field says 17 bytes, 18 follow the header (1 extra)"},
		{"extra on empty", "FFFE01134C9A000000", "data length field says 0 bytes, 1 follow the header (1 extra)"},
		{"crc", "FFFE0114ABCD0000", "checksum 0xABCD, want 0xE51F"},
		{"crc of flipped data", "FFFE0118AFA1000101", "checksum 0xAFA1, want 0x"},
		{"LiteOS ver_num null", "FFFE134C9A0000", "frame of 7 bytes"},
		{"LiteOS crc null", "FFFE0113", "frame of 4 bytes"},
	} {
		b := unhex(t, tc.frame)
		f, err := Decode(b)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Decode(%s) = %+v, %v; want an error containing %q", tc.name, tc.frame, f, err, tc.want)
		}
		if IsPCP(b) {
			t.Errorf("%s: IsPCP(%s) = true", tc.name, tc.frame)
		}
	}
}

func TestIsPCP(t *testing.T) {
	for _, g := range readGolden(t) {
		if want := messages.PcpCode(g.frame[3]).Valid(); IsPCP(g.frame) != want {
			t.Errorf("IsPCP(%s) = %v, want %v", g.name, !want, want)
		}
	}
	reserved, _ := Encode(Frame{Version: 1, Code: 0x19})
	business := [][]byte{
		nil,
		{},
		{0xFF},
		{0xFF, 0xFE},
		[]byte(`{"temperature":21.5,"humidity":40}`),
		[]byte(`[]`),
		{0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08},
		{0x01, 0x13, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},
		{0xFE, 0xFF, 0x01, 0x13, 0x4C, 0x9A, 0x00, 0x00},     // marker little-endian
		unhex(t, "FFFE0113 4C9A 0000 00"),                    // a byte too many
		unhex(t, "FFFE0114 E51F 0001"),                       // length says 1, none follow
		unhex(t, "FFFE0214 E51F 0000"),                       // version 2
		unhex(t, "FFFE0112 B501 0000"),                       // code 18 (valid checksum)
		reserved,                                             // code 25 (valid checksum)
		unhex(t, "FFFE0113 0000 0000"),                       // checksum missing
		append(unhex(t, "FFFE"), []byte(`{"a":1}`)...),       // business data that starts with FFFE
		unhex(t, "FFFE0113 4C9A"),                            // 6 bytes
		unhex(t, "0102030405060708090A0B0C0D0E0F1011121314"), // binary telemetry
	}
	for _, b := range business {
		if IsPCP(b) {
			t.Errorf("IsPCP(%X) = true, want false", b)
		}
	}
}
