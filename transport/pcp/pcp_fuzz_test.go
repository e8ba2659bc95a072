package pcp

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/otafleet/otafleet/messages"
)

// seedFrames adds the golden corpus and a few broken frames to f.
func seedFrames(f *testing.F) {
	for _, g := range readGolden(f) {
		f.Add(g.frame)
		f.Add(g.frame[:len(g.frame)-1])
	}
	f.Add([]byte{})
	f.Add([]byte(`{"temperature":21.5}`))
	f.Add([]byte{0xFF, 0xFE, 0x01, 0x15, 0x00, 0x00, 0xFF, 0xFF})
	f.Add(mustEncode(SegmentResponse{Result: messages.PcpResultNoSuchTask}))
	f.Add(mustEncode(SegmentResponse{Data: bytes.Repeat([]byte{0x5A}, 500)}))
}

// FuzzDecode: Decode never panics; whatever it accepts re-encodes to the
// same bytes; IsPCP holds exactly for the accepted frames of a defined code.
func FuzzDecode(f *testing.F) {
	seedFrames(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := Decode(b)
		isPCP := IsPCP(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode error %v does not wrap ErrMalformed", err)
			}
			if isPCP {
				t.Fatalf("IsPCP(%X) = true but Decode: %v", b, err)
			}
			return
		}
		re, err := Encode(fr)
		if err != nil {
			t.Fatalf("Encode(Decode(%X)): %v", b, err)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("Encode(Decode(%X)) = %X", b, re)
		}
		if isPCP != fr.Code.Valid() {
			t.Fatalf("IsPCP(%X) = %v for a decoded frame of code %v", b, isPCP, fr.Code)
		}
	})
}

// FuzzDecodeMessage frames (code, data) with a correct checksum, so that
// every input reaches the typed decoders, and routes it by code through both
// directions: none panics; every error wraps ErrMalformed; whatever decodes
// re-encodes to the same bytes (but for the 1-byte 0x15 refusal, which
// re-encodes with its segment number) and decodes again to the same value.
func FuzzDecodeMessage(f *testing.F) {
	for _, g := range readGolden(f) {
		fr, err := Decode(g.frame)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(byte(fr.Code), fr.Data)
		f.Add(byte(fr.Code), fr.Data[:len(fr.Data)/2])
	}
	f.Add(byte(messages.PcpCodeRequestSegment), []byte{messages.PcpResultNoSuchTask})
	f.Add(byte(messages.PcpCodeQueryVersion), append([]byte{0}, "V1\x00.0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"...))
	f.Fuzz(func(t *testing.T, code byte, data []byte) {
		if len(data) > MaxDataLen {
			return
		}
		b, err := Encode(Frame{Version: ProtocolVersion, Code: messages.PcpCode(code), Data: data})
		if err != nil {
			t.Fatal(err)
		}
		for _, decode := range []func([]byte) (Message, error){DecodeUplink, DecodeDownlink} {
			m, err := decode(b)
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("error %v does not wrap ErrMalformed", err)
				}
				if m != nil {
					t.Fatalf("message %#v with error %v", m, err)
				}
				continue
			}
			if !IsPCP(b) || m.Code() != messages.PcpCode(code) {
				t.Fatalf("%X decoded as %#v (IsPCP %v)", b, m, IsPCP(b))
			}
			re, err := EncodeMessage(m)
			if err != nil {
				t.Fatalf("EncodeMessage(%#v) from %X: %v", m, b, err)
			}
			short := m.Code() == messages.PcpCodeRequestSegment && len(data) == 1
			if !short && !bytes.Equal(re, b) {
				t.Fatalf("%X decoded as %#v re-encodes as %X", b, m, re)
			}
			m2, err := decode(re)
			if err != nil || !reflect.DeepEqual(m2, m) {
				t.Fatalf("%#v re-decoded as %#v, %v", m, m2, err)
			}
		}
	})
}

// FuzzEncode builds every message from fuzzed fields: encoding fails only on
// a bad version or a refusal with data, and what encodes decodes to the same
// message.
func FuzzEncode(f *testing.F) {
	f.Add(byte(0), "V1.0", uint16(500), uint16(4), uint16(0x3132), []byte("HELLO, IoT SOTA!"))
	f.Add(byte(0x80), "", uint16(0), uint16(0), uint16(0), []byte{})
	f.Add(byte(0x7F), "0123456789abcdefg", uint16(0xFFFF), uint16(0xFFFF), uint16(0xFFFF), []byte{0})
	f.Add(byte(3), "v\x00", uint16(1), uint16(2), uint16(3), []byte(nil))
	f.Fuzz(func(t *testing.T, result byte, version string, a, b, c uint16, data []byte) {
		if len(data) == 0 {
			data = nil // the decoders return nil for no data
		}
		msgs := []struct {
			m  Message
			up bool
		}{
			{QueryVersion{}, false},
			{NotifyNewVersion{version, a, b, c}, false},
			{SegmentResponse{result, a, data}, false},
			{DownloadResultAck{result}, false},
			{ExecuteUpgrade{}, false},
			{UpgradeResultAck{result}, false},
			{VersionResponse{result, version}, true},
			{NotifyResponse{result}, true},
			{SegmentRequest{version, a}, true},
			{DownloadResult{result}, true},
			{ExecuteResponse{result}, true},
			{UpgradeResult{result, version}, true},
		}
		for _, x := range msgs {
			enc, err := EncodeMessage(x.m)
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("EncodeMessage(%#v): %v does not wrap ErrMalformed", x.m, err)
				}
				continue
			}
			decode := DecodeDownlink
			if x.up {
				decode = DecodeUplink
			}
			got, err := decode(enc)
			if err != nil || !reflect.DeepEqual(got, x.m) {
				t.Fatalf("%#v encoded as %X decodes as %#v, %v", x.m, enc, got, err)
			}
		}
	})
}
