package pcp

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/otafleet/otafleet/messages"
)

// goldenFrame is one line of testdata/golden.txt.
type goldenFrame struct {
	name, dir string
	frame     []byte
}

// readGolden reads testdata/golden.txt.
func readGolden(t testing.TB) []goldenFrame {
	t.Helper()
	data, err := os.ReadFile("testdata/golden.txt")
	if err != nil {
		t.Fatal(err)
	}
	var out []goldenFrame
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 3 {
			t.Fatalf("testdata/golden.txt:%d: %d fields, want name, direction, hex", line, len(fields))
		}
		b, err := hex.DecodeString(fields[2])
		if err != nil {
			t.Fatalf("testdata/golden.txt:%d: %v", line, err)
		}
		out = append(out, goldenFrame{fields[0], fields[1], b})
	}
	return out
}

// goldenWant is what each golden frame decodes to: the uplink and downlink
// messages (nil when the direction does not apply) and, for frames without
// a typed meaning, their code.
var goldenWant = map[string]struct {
	up, down Message
	code     messages.PcpCode
}{
	"query-version":          {down: QueryVersion{}},
	"version-response-v1.0":  {up: VersionResponse{Result: messages.PcpResultOK, Version: "V1.0"}},
	"notify-v1.0-4x500-3132": {down: NotifyNewVersion{Version: "V1.0", SegmentSize: 500, SegmentCount: 4, CheckCode: 0x3132}},
	"notify-v1.0-1x500-0000": {down: NotifyNewVersion{Version: "V1.0", SegmentSize: 500, SegmentCount: 1, CheckCode: 0}},
	"segment-request-0":      {up: SegmentRequest{Version: "V1.0", SegmentNo: 0}},
	"segment-response-0":     {down: SegmentResponse{Result: messages.PcpResultOK, SegmentNo: 0, Data: []byte("HELLO, IoT SOTA!")}},
	"download-result-ok":     {up: DownloadResult{Status: messages.PcpResultOK}, down: DownloadResultAck{Result: messages.PcpResultOK}},
	"execute-upgrade":        {down: ExecuteUpgrade{}},
	"execute-response-ok":    {up: ExecuteResponse{Result: messages.PcpResultOK}},
	"upgrade-result-v1.0":    {up: UpgradeResult{Result: messages.PcpResultOK, Version: "V1.0"}},
	"upgrade-result-ack-ok":  {down: UpgradeResultAck{Result: messages.PcpResultOK}},
	"notify-without-data":    {code: messages.PcpCodeNotifyNewVersion},
	"reserved-code-0x12":     {code: 0x12},
}

func TestGolden(t *testing.T) {
	frames := readGolden(t)
	if len(frames) != len(goldenWant) {
		t.Errorf("testdata/golden.txt has %d frames, goldenWant %d", len(frames), len(goldenWant))
	}
	for _, g := range frames {
		t.Run(g.name, func(t *testing.T) {
			want, ok := goldenWant[g.name]
			if !ok {
				t.Fatalf("no expectation in goldenWant")
			}
			f, err := Decode(g.frame)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			// The checksum verifies: recomputed with bytes 4..5 zeroed.
			z := bytes.Clone(g.frame)
			z[4], z[5] = 0, 0
			if got, stored := CRC(z), uint16(g.frame[4])<<8|uint16(g.frame[5]); got != stored {
				t.Errorf("CRC = 0x%04X, frame carries 0x%04X", got, stored)
			}
			if re, err := Encode(f); err != nil || !bytes.Equal(re, g.frame) {
				t.Errorf("Encode(Decode(frame)) = %X, %v; want %X", re, err, g.frame)
			}
			up, upErr := DecodeUplink(g.frame)
			down, downErr := DecodeDownlink(g.frame)
			switch g.dir {
			case "up", "down", "both":
				if g.dir != "down" {
					check(t, "uplink", g.frame, up, upErr, want.up)
				}
				if g.dir != "up" {
					check(t, "downlink", g.frame, down, downErr, want.down)
				}
				if !IsPCP(g.frame) {
					t.Errorf("IsPCP = false")
				}
			case "frame":
				if f.Code != want.code {
					t.Errorf("code %v, want %v", f.Code, want.code)
				}
				if upErr == nil || downErr == nil || !errors.Is(upErr, ErrMalformed) || !errors.Is(downErr, ErrMalformed) {
					t.Errorf("DecodeUplink = %v, %v; DecodeDownlink = %v, %v; want ErrMalformed", up, upErr, down, downErr)
				}
				t.Logf("no typed meaning: %v; %v", upErr, downErr)
			default:
				t.Fatalf("direction %q", g.dir)
			}
		})
	}
}

// check compares a decoded golden message with want and re-encodes it.
func check(t *testing.T, dir string, frame []byte, got Message, err error, want Message) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", dir, err)
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s: decoded %#v, want %#v", dir, got, want)
	}
	if re, err := EncodeMessage(got); err != nil || !bytes.Equal(re, frame) {
		t.Errorf("%s: re-encoded %X, %v; want %X", dir, re, err, frame)
	}
}

// TestGoldenDocCRC: the doc's 0x14 example said to carry 0x02F7 does not
// reproduce; its correct checksum is 0x3AE6 (spec 4.3).
func TestGoldenDocCRC(t *testing.T) {
	doc, _ := hex.DecodeString("FFFE011402F7001656312E3000000000000000000000000001F400010000")
	_, err := Decode(doc)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "checksum 0x02F7, want 0x3AE6") {
		t.Errorf("Decode(doc example with 02F7) = %v, want a checksum error naming 0x02F7 and 0x3AE6", err)
	}
	if IsPCP(doc) {
		t.Errorf("IsPCP(doc example with 02F7) = true")
	}
	b, err := EncodeNotify(NotifyNewVersion{Version: "V1.0", SegmentSize: 500, SegmentCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != strings.ToLower("FFFE01143AE6001656312E3000000000000000000000000001F400010000") {
		t.Errorf("EncodeNotify = %s", got)
	}
}

// TestGoldenEncoders builds each golden frame with the named encoders.
func TestGoldenEncoders(t *testing.T) {
	must := func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		got  []byte
		want string
	}{
		{EncodeQueryVersion(), "FFFE01134C9A0000"},
		{must(EncodeVersionResponse(VersionResponse{Version: "V1.0"})), "FFFE01137AB300110056312E30000000000000000000000000"},
		{must(EncodeNotify(NotifyNewVersion{Version: "V1.0", SegmentSize: 500, SegmentCount: 4, CheckCode: 0x3132})), "FFFE0114913F001656312E3000000000000000000000000001F400043132"},
		{must(EncodeSegmentRequest(SegmentRequest{Version: "V1.0"})), "FFFE01155618001256312E300000000000000000000000000000"},
		{must(EncodeSegmentResponse(SegmentResponse{Data: []byte("HELLO, IoT SOTA!")})), "FFFE0115E107001300000048454C4C4F2C20496F5420534F544121"},
		{EncodeDownloadResult(DownloadResult{}), "FFFE0116850E000100"},
		{EncodeDownloadResultAck(DownloadResultAck{}), "FFFE0116850E000100"},
		{EncodeExecute(), "FFFE0117CF900000"},
		{EncodeExecuteResponse(ExecuteResponse{}), "FFFE0117B725000100"},
		{must(EncodeUpgradeResult(UpgradeResult{Version: "V1.0"})), "FFFE0118C7D200110056312E30000000000000000000000000"},
		{EncodeUpgradeResultAck(UpgradeResultAck{}), "FFFE0118AFA1000100"},
	} {
		if got := strings.ToUpper(hex.EncodeToString(tc.got)); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}
