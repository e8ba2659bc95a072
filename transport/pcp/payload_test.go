package pcp

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/otafleet/otafleet/messages"
)

// uplinks and downlinks hold a few values of every message type.
var (
	uplinks = []Message{
		VersionResponse{Result: messages.PcpResultOK, Version: "V1.0"},
		VersionResponse{Result: messages.PcpResultInternalError},
		VersionResponse{Result: messages.PcpResultOK, Version: "0123456789abcdef"},
		VersionResponse{Result: messages.PcpResultOK, Version: "a\x01b\x7f"},
		NotifyResponse{Result: messages.PcpResultOK},
		NotifyResponse{Result: messages.PcpResultAlreadyLatest},
		SegmentRequest{Version: "2.0", SegmentNo: 0xFFFE},
		SegmentRequest{Version: "V1.0-rc_1.build7"},
		DownloadResult{Status: messages.PcpResultOK},
		DownloadResult{Status: messages.PcpResultVerificationFailed},
		ExecuteResponse{Result: messages.PcpResultOK},
		ExecuteResponse{Result: messages.PcpResultLowBattery},
		UpgradeResult{Result: messages.PcpResultOK, Version: "2.0"},
		UpgradeResult{Result: messages.PcpResultInstallFailed, Version: "1.0"},
	}
	downlinks = []Message{
		QueryVersion{},
		NotifyNewVersion{Version: "2.0", SegmentSize: 500, SegmentCount: 6000, CheckCode: 0xBEEF},
		NotifyNewVersion{Version: "", SegmentSize: 32, SegmentCount: 0xFFFF},
		SegmentResponse{Result: messages.PcpResultOK, SegmentNo: 5, Data: bytes.Repeat([]byte{0xA5}, 500)},
		SegmentResponse{Result: messages.PcpResultOK, SegmentNo: 6, Data: []byte{1}},
		SegmentResponse{Result: messages.PcpResultOK, SegmentNo: 0xFFFF, Data: make([]byte, maxSegmentDataBytes)},
		SegmentResponse{Result: messages.PcpResultNoSuchTask, SegmentNo: 3},
		SegmentResponse{Result: messages.PcpResultNoSuchSegment, SegmentNo: 9},
		SegmentResponse{Result: messages.PcpResultOK, SegmentNo: 7}, // an empty segment: legal on the wire
		DownloadResultAck{Result: messages.PcpResultOK},
		DownloadResultAck{Result: messages.PcpResultNoSuchTask},
		ExecuteUpgrade{},
		UpgradeResultAck{Result: messages.PcpResultOK},
		UpgradeResultAck{Result: messages.PcpResultNoSuchTask},
	}
)

func TestRoundTrip(t *testing.T) {
	for _, dir := range []struct {
		name   string
		msgs   []Message
		decode func([]byte) (Message, error)
	}{{"uplink", uplinks, DecodeUplink}, {"downlink", downlinks, DecodeDownlink}} {
		for _, m := range dir.msgs {
			b, err := EncodeMessage(m)
			if err != nil {
				t.Errorf("%s: EncodeMessage(%#v): %v", dir.name, m, err)
				continue
			}
			if !IsPCP(b) || messages.PcpCode(b[3]) != m.Code() {
				t.Errorf("%s: %T encoded as %X", dir.name, m, b)
			}
			got, err := dir.decode(b)
			if err != nil {
				t.Errorf("%s: decode(%T %X): %v", dir.name, m, b, err)
				continue
			}
			if !reflect.DeepEqual(got, m) {
				t.Errorf("%s: %#v decoded as %#v", dir.name, m, got)
			}
		}
	}
}

// TestNamedCodecs runs each named encoder against its decoder.
func TestNamedCodecs(t *testing.T) {
	dec := func(b []byte) Frame {
		t.Helper()
		f, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	eq := func(what string, got, want any, err error) {
		t.Helper()
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, %v; want %#v", what, got, err, want)
		}
	}
	must := func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	qv, err := DecodeQueryVersion(dec(EncodeQueryVersion()))
	eq("query version", qv, QueryVersion{}, err)
	vr := VersionResponse{Result: 0, Version: "1.2.3"}
	got1, err := DecodeVersionResponse(dec(must(EncodeVersionResponse(vr))))
	eq("version response", got1, vr, err)
	n := NotifyNewVersion{Version: "1.2.4", SegmentSize: 256, SegmentCount: 3, CheckCode: 0x0102}
	got2, err := DecodeNotify(dec(must(EncodeNotify(n))))
	eq("notify", got2, n, err)
	nr := NotifyResponse{Result: messages.PcpResultBusy}
	got3, err := DecodeNotifyResponse(dec(EncodeNotifyResponse(nr)))
	eq("notify response", got3, nr, err)
	sr := SegmentRequest{Version: "1.2.4", SegmentNo: 2}
	got4, err := DecodeSegmentRequest(dec(must(EncodeSegmentRequest(sr))))
	eq("segment request", got4, sr, err)
	sp := SegmentResponse{SegmentNo: 2, Data: []byte("tail")}
	got5, err := DecodeSegmentResponse(dec(must(EncodeSegmentResponse(sp))))
	eq("segment response", got5, sp, err)
	dr := DownloadResult{Status: messages.PcpResultDownloadTimeout}
	got6, err := DecodeDownloadResult(dec(EncodeDownloadResult(dr)))
	eq("download result", got6, dr, err)
	da := DownloadResultAck{Result: messages.PcpResultNoSuchTask}
	got7, err := DecodeDownloadResultAck(dec(EncodeDownloadResultAck(da)))
	eq("download result ack", got7, da, err)
	ex, err := DecodeExecute(dec(EncodeExecute()))
	eq("execute", ex, ExecuteUpgrade{}, err)
	er := ExecuteResponse{Result: messages.PcpResultInternalError}
	got8, err := DecodeExecuteResponse(dec(EncodeExecuteResponse(er)))
	eq("execute response", got8, er, err)
	ur := UpgradeResult{Result: messages.PcpResultOK, Version: "1.2.4"}
	got9, err := DecodeUpgradeResult(dec(must(EncodeUpgradeResult(ur))))
	eq("upgrade result", got9, ur, err)
	ua := UpgradeResultAck{Result: messages.PcpResultOK}
	got10, err := DecodeUpgradeResultAck(dec(EncodeUpgradeResultAck(ua)))
	eq("upgrade result ack", got10, ua, err)
}

// frame builds a frame of any code and data.
func frame(t testing.TB, c messages.PcpCode, data ...byte) []byte {
	t.Helper()
	b, err := Encode(Frame{Version: ProtocolVersion, Code: c, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func version16(s string) []byte {
	b := make([]byte, messages.PcpVersionLen)
	copy(b, s)
	return b
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestTypedDecodeRejects(t *testing.T) {
	v := version16("V1.0")
	for _, tc := range []struct {
		name   string
		dir    string // up or down
		frame  []byte
		wantIn string
	}{
		// Uplinks.
		{"version response short", "up", frame(t, 0x13, 0), "0x13 (query device version) response: 1 data bytes, want 17"},
		{"version response long", "up", frame(t, 0x13, cat([]byte{0}, v, []byte{0})...), "response: 18 data bytes, want 17"},
		{"version response empty", "up", frame(t, 0x13), "response: 0 data bytes, want 17"},
		{"version not ASCII", "up", frame(t, 0x13, cat([]byte{0}, version16("V1.\xc3\xa9"))...), "current version field 56 31 2E C3 A9 00"},
		{"version hole", "up", frame(t, 0x13, cat([]byte{0}, version16("V1\x00.0"))...), "byte 2 is 0x00: want ASCII without 0x00, then 0x00 padding"},
		{"notify response empty", "up", frame(t, 0x14), "0x14 (new version notification) response: 0 data bytes, want 1"},
		{"notify response long", "up", frame(t, 0x14, 0, 0), "response: 2 data bytes, want 1"},
		{"segment request short", "up", frame(t, 0x15, v...), "0x15 (request package segment) request: 16 data bytes, want 18"},
		{"segment request long", "up", frame(t, 0x15, cat(v, []byte{0, 0, 0})...), "request: 19 data bytes, want 18"},
		{"segment request version", "up", frame(t, 0x15, cat(version16("\xff"), []byte{0, 0})...), "0x15 (request package segment): version field FF 00"},
		{"download result empty", "up", frame(t, 0x16), "0x16 (report download result) request: 0 data bytes, want 1"},
		{"execute response long", "up", frame(t, 0x17, 0, 1), "0x17 (execute upgrade) response: 2 data bytes, want 1"},
		{"upgrade result short", "up", frame(t, 0x18, 0), "0x18 (report upgrade result) request: 1 data bytes, want 17"},
		{"upgrade result version", "up", frame(t, 0x18, cat([]byte{0}, version16("1.0\x00x"))...), "byte 3 is 0x00"},
		{"reserved up", "up", frame(t, 0x12), "message code 0x12 (reserved): 0x13 to 0x18 are defined"},
		{"reserved up 0x19", "up", frame(t, 0x19, 0), "message code 0x19 (reserved)"},
		{"bad frame up", "up", []byte("{}"), "frame of 2 bytes"},
		// Downlinks.
		{"query version with data", "down", frame(t, 0x13, 0), "0x13 (query device version) request: 1 data bytes, want 0"},
		{"notify empty", "down", frame(t, 0x14), "0x14 (new version notification) request: 0 data bytes, want 22"},
		{"notify short", "down", frame(t, 0x14, cat(v, []byte{1, 0xF4, 0, 1})...), "request: 20 data bytes, want 22"},
		{"notify version", "down", frame(t, 0x14, cat(version16("\x00V1"), []byte{1, 0xF4, 0, 1, 0, 0})...), "target version field 00 56 31"},
		{"segment response empty", "down", frame(t, 0x15), "0x15 (request package segment) response: no data, want the result byte"},
		{"segment response ok without number", "down", frame(t, 0x15, 0), "result 0x00 with 1 data bytes, want at least 3"},
		{"segment response ok half number", "down", frame(t, 0x15, 0, 0), "result 0x00 with 2 data bytes, want at least 3"},
		{"segment refusal of 2", "down", frame(t, 0x15, 0x80, 0), "result 0x80 with 2 data bytes, want 1 or 3"},
		{"segment refusal with data", "down", frame(t, 0x15, 0x81, 0, 1, 0xAA), "result 0x81 with 4 data bytes, want 1 or 3: a refusal carries no segment data"},
		{"download ack long", "down", frame(t, 0x16, 0, 0), "0x16 (report download result) response: 2 data bytes, want 1"},
		{"execute with data", "down", frame(t, 0x17, 0, 1), "0x17 (execute upgrade) request: 2 data bytes, want 0"},
		{"upgrade ack empty", "down", frame(t, 0x18), "0x18 (report upgrade result) response: 0 data bytes, want 1"},
		{"reserved down", "down", frame(t, 0x7F), "message code 0x7F (reserved)"},
		{"bad frame down", "down", frame(t, 0x18, 0)[:8], "truncated"},
	} {
		decode := DecodeUplink
		if tc.dir == "down" {
			decode = DecodeDownlink
		}
		m, err := decode(tc.frame)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.wantIn) {
			t.Errorf("%s: decode %s %X = %#v, %v; want an error containing %q", tc.name, tc.dir, tc.frame, m, err, tc.wantIn)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

// TestTypedDecodeWrongCode: each named decoder refuses a frame of another code.
func TestTypedDecodeWrongCode(t *testing.T) {
	f := Frame{Version: 1, Code: 0x12, Data: []byte{0}}
	errs := []error{}
	add := func(_ any, err error) { errs = append(errs, err) }
	add(DecodeVersionResponse(f))
	add(DecodeNotifyResponse(f))
	add(DecodeSegmentRequest(f))
	add(DecodeDownloadResult(f))
	add(DecodeExecuteResponse(f))
	add(DecodeUpgradeResult(f))
	add(DecodeQueryVersion(f))
	add(DecodeNotify(f))
	add(DecodeSegmentResponse(f))
	add(DecodeDownloadResultAck(f))
	add(DecodeExecute(f))
	add(DecodeUpgradeResultAck(f))
	for i, err := range errs {
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "frame of code 0x12 (reserved), want 0x1") {
			t.Errorf("decoder %d: %v", i, err)
		}
	}
}

// TestSegmentRefusalForms: the 1-byte refusal is accepted (spec 4.5) and
// re-encoded with its segment number; otafleet's 3-byte refusal round-trips.
func TestSegmentRefusalForms(t *testing.T) {
	m, err := DecodeDownlink(frame(t, 0x15, messages.PcpResultNoSuchTask))
	if err != nil || !reflect.DeepEqual(m, SegmentResponse{Result: messages.PcpResultNoSuchTask}) {
		t.Fatalf("1-byte refusal = %#v, %v", m, err)
	}
	b, _ := EncodeMessage(m)
	if want := frame(t, 0x15, messages.PcpResultNoSuchTask, 0, 0); !bytes.Equal(b, want) {
		t.Errorf("re-encoded %X, want %X", b, want)
	}
	b, err = EncodeSegmentResponse(SegmentResponse{Result: messages.PcpResultNoSuchSegment, SegmentNo: 0x0102})
	if want := frame(t, 0x15, messages.PcpResultNoSuchSegment, 1, 2); err != nil || !bytes.Equal(b, want) {
		t.Errorf("EncodeSegmentResponse(refusal) = %X, %v; want %X", b, err, want)
	}
}

func TestEncodeRejectsPayloads(t *testing.T) {
	for _, tc := range []struct {
		m    Message
		want string
	}{
		{VersionResponse{Version: "0123456789abcdefX"}, `0x13 (query device version): current version "0123456789abcdefX" is 17 bytes, at most 16`},
		{NotifyNewVersion{Version: strings.Repeat("9", 40)}, "target version \"9999999999999999999999999999999999999999\" is 40 bytes, at most 16"},
		{SegmentRequest{Version: "1.0\x00"}, `0x15 (request package segment): version "1.0\x00": byte 3 is 0x00: a version is ASCII without 0x00`},
		{UpgradeResult{Version: "v\u00e9"}, "byte 1 is 0xC3"},
		{SegmentResponse{Result: messages.PcpResultNoSuchTask, Data: []byte{1}}, "result 0x80 with 1 data bytes: a refusal carries no data"},
		{SegmentResponse{Data: make([]byte, maxSegmentDataBytes+1)}, "segment data of 65533 bytes, at most 65532"},
	} {
		b, err := EncodeMessage(tc.m)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("EncodeMessage(%#v) = %X, %v; want an error containing %q", tc.m, b, err, tc.want)
		}
	}
	// The named encoders report the same errors.
	if _, err := EncodeVersionResponse(VersionResponse{Version: strings.Repeat("x", 17)}); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeVersionResponse: %v", err)
	}
	if _, err := EncodeNotify(NotifyNewVersion{Version: strings.Repeat("x", 17)}); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeNotify: %v", err)
	}
	if _, err := EncodeSegmentRequest(SegmentRequest{Version: strings.Repeat("x", 17)}); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeSegmentRequest: %v", err)
	}
	if _, err := EncodeUpgradeResult(UpgradeResult{Version: strings.Repeat("x", 17)}); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeUpgradeResult: %v", err)
	}
	if _, err := EncodeSegmentResponse(SegmentResponse{Result: 1, Data: []byte{1}}); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeSegmentResponse: %v", err)
	}
}

// TestDecodedDataIsCopied: a segment's data does not alias the frame.
func TestDecodedDataIsCopied(t *testing.T) {
	b, _ := EncodeSegmentResponse(SegmentResponse{Data: []byte("abc")})
	m, err := DecodeDownlink(b)
	if err != nil {
		t.Fatal(err)
	}
	b[HeaderLen+3] = 'X'
	if got := string(m.(SegmentResponse).Data); got != "abc" {
		t.Errorf("data %q after changing the frame", got)
	}
}
