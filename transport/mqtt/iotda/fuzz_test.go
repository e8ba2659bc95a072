package iotda

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

// FuzzDecodeUplink: any payload decodes or fails with ErrMalformed; never a
// panic, and every input is a version report or a progress report with the
// documented bounds. The one-pass decoding gives what decoding in parts
// gives (the same inputs, ignored events and error).
func FuzzDecodeUplink(f *testing.F) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	fw := "1.0"
	pr := 40
	f.Add(EncodeVersionReport("d1", &fw, nil, now))
	f.Add(EncodeProgress("d1", Progress{ResultCode: 7, Progress: &pr, Version: "1.0", Description: "x"}, now))
	f.Add([]byte(`{"object_device_id":"x","services":[{"service_id":"$ota","event_type":"version_report","paras":{"sw_version":"2"}}]}`))
	f.Add([]byte(`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":1e3,"version":""}}]}`))
	f.Add([]byte(`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"2"}},{"service_id":7}]}`))
	f.Add([]byte(`{"services":[null,{"service_id":"$ota","event_type":"upgrade_progress_report","paras":null}]}`))
	for _, p := range fastCases {
		f.Add([]byte(p))
	}
	for _, p := range slowCases {
		f.Add([]byte(p))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		u, err := DecodeUplink("d1", payload)
		if fast, ok := decodeUplinkFast("d1", payload); ok {
			j, jerr := decodeUplinkJSON("d1", payload)
			if jerr != nil || !sameUplink(fast, j) {
				t.Fatalf("without encoding/json: %v; with it: %v %v", fast, j, jerr)
			}
		}
		if len(payload) <= MaxPayload {
			parts, perr := decodeUplinkInParts("d1", payload)
			if fmt.Sprint(err) != fmt.Sprint(perr) || !sameUplink(u, parts) {
				t.Fatalf("one pass: %v %v; in parts: %v %v", u, err, parts, perr)
			}
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		for _, in := range u.Inputs {
			switch {
			case in.GetVersionReported() != nil:
				v := in.GetVersionReported()
				if v.FwVersion == nil && v.SwVersion == nil {
					t.Fatal("empty version report")
				}
			case in.GetMqttProgress() != nil:
				if p := in.GetMqttProgress(); p.Progress != nil && (*p.Progress < 0 || *p.Progress > 100) {
					t.Fatalf("progress %d", *p.Progress)
				}
			default:
				t.Fatalf("unexpected input %v", in)
			}
		}
	})
}

// FuzzParseClientID: parsing never panics, and what parses formats back to
// the same string.
func FuzzParseClientID(f *testing.F) {
	f.Add("meter_7_0_1_2025041401")
	f.Add("d_0_0_2025041401")
	f.Add("_0_1_2025041401")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseClientID(s)
		if err != nil {
			if !errors.Is(err, ErrClientID) {
				t.Fatalf("error %v is not ErrClientID", err)
			}
			return
		}
		if c.String() != s {
			t.Fatalf("%q parsed to %+v, formats as %q", s, c, c.String())
		}
		_ = CheckPassword("secret", c.Timestamp, []byte(s))
	})
}

// FuzzDecodeDownlink: the device side never panics either.
func FuzzDecodeDownlink(f *testing.F) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	f.Add(EncodeVersionQuery("d1", now))
	f.Add(EncodeUpgrade("d1", true, UpgradeParas{Version: "2", URL: "u", FileSize: 3, FileName: "f"}, now))
	f.Fuzz(func(t *testing.T, payload []byte) {
		d, ok, err := DecodeDownlink(payload)
		if err == nil && ok && (d.EventType == EventFirmwareUpgrade || d.EventType == EventSoftwareUpgrade) && d.Upgrade == nil {
			t.Fatal("upgrade event without paras")
		}
	})
}

// FuzzCheckPassword: any password bytes are checked without a panic, and
// only the right one passes.
func FuzzCheckPassword(f *testing.F) {
	f.Add("s3cret", "2026112312", []byte(Password("s3cret", "2026112312")))
	f.Add("", "", []byte("zz"))
	f.Fuzz(func(t *testing.T, secret, ts string, password []byte) {
		if CheckPassword(secret, ts, password) && !strings.EqualFold(string(password), Password(secret, ts)) {
			t.Fatalf("password %q accepted for %q at %q", password, secret, ts)
		}
	})
}

// sameUplink reports whether a and b hold the same inputs and ignored events.
func sameUplink(a, b Uplink) bool {
	return slices.Equal(a.Ignored, b.Ignored) &&
		slices.EqualFunc(a.Inputs, b.Inputs, func(x, y *messages.DeviceInput) bool { return proto.Equal(x, y) })
}

// fastCases are payloads decodeUplinkFast decodes; slowCases, payloads it
// leaves to encoding/json (each differs from a fast one in one point).
var (
	fastCases = []string{
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1.0"}}]}`,
		` { "object_device_id" : "d1" , "services" : [ { "service_id" : "$ota" , "event_type" : "version_report" , "event_time" : "20261123T160000Z" , "paras" : { "sw_version" : "2" , "fw_version" : "1.0" } } ] } ` + "\n",
		`{"services":[{"paras":{"fw_version":""},"event_type":"version_report","service_id":"$ota"}],"object_device_id":""}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1","result_code":5,"version":"x"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":0,"progress":100,"version":"2.0","description":"ok é"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":-0,"version":"","fw_version":"9"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":-2147483648,"progress":0,"version":"v"}},{"service_id":"$ota","event_type":"version_report","paras":{"sw_version":"3"}}]}`,
	}
	slowCases = []string{
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"FW_version":"1.0"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1.0","fw_version":"2"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1\u002e0"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1.0` + "\xff" + `"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1.0` + "\t" + `"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":null}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"sw_version":"1","progress":"x"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":1.0,"version":"v"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":1e3,"version":"v"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":01,"version":"v"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":2147483648,"version":"v"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":0,"progress":101,"version":"v"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":0}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"firmware_upgrade","paras":{"version":"v"}}]}`,
		`{"services":[{"service_id":"meter","event_type":"version_report","paras":{"fw_version":"1"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1"},"extra":1}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1"}}],"services":[]}`,
		`{"object_device_id":"d2","services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1"}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1"}}]}x`,
		`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1"}},]}`,
		`{"services":[]}`,
		`{"services":null}`,
		`{}`,
	}
)

// TestDecodeUplinkFast: the plain reports are decoded without encoding/json,
// to what encoding/json decodes them to; the others are left to it.
func TestDecodeUplinkFast(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	fw, pr := "1.0", 40
	fast := append([]string{
		string(EncodeVersionReport("d1", &fw, nil, now)),
		string(EncodeVersionReport("d1", nil, &fw, now)),
		string(EncodeProgress("d1", Progress{ResultCode: 7, Progress: &pr, Version: "1.0", Description: "x"}, now)),
		string(EncodeProgress("d1", Progress{ResultCode: 0, Version: "1.0"}, now)),
	}, fastCases...)
	for _, p := range fast {
		u, ok := decodeUplinkFast("d1", []byte(p))
		j, err := decodeUplinkJSON("d1", []byte(p))
		if !ok || err != nil || !sameUplink(u, j) {
			t.Errorf("%s: without encoding/json %v (%v), with it %v %v", p, u, ok, j, err)
		}
	}
	for _, p := range slowCases {
		if u, ok := decodeUplinkFast("d1", []byte(p)); ok {
			t.Errorf("%s: decoded without encoding/json to %v", p, u)
		}
	}
}

// TestEncodeDownlinks: the downlinks are written as encode (encoding/json)
// writes them, byte for byte.
func TestEncodeDownlinks(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	for _, id := range []string{"d1", "", "meter<&>\"\\\u2028é\x01\xff"} {
		if got, want := EncodeVersionQuery(id, now), encode(id, EventVersionQuery, struct{}{}, now); string(got) != string(want) {
			t.Errorf("version query of %q:\n%s\nwant\n%s", id, got, want)
		}
	}
	for _, p := range []UpgradeParas{
		{},
		{Version: "2.0", URL: "https://10.0.0.1:8943/packages/k1", FileSize: 16384, FileName: "fw.bin",
			AccessToken: "tok.abc-_", Expires: 86400, Sign: strings.Repeat("ab", 32), CustomInfo: "ci"},
		{Version: "v<1>", URL: "https://h/p?a=1&b=2", FileSize: -1, FileName: "n\"a\\me\n", Expires: -5, CustomInfo: "\u2029 é \x7f \xff"},
	} {
		for _, software := range []bool{false, true} {
			ev := EventFirmwareUpgrade
			if software {
				ev = EventSoftwareUpgrade
			}
			if got, want := EncodeUpgrade("d1", software, p, now), encode("d1", ev, p, now); string(got) != string(want) {
				t.Errorf("upgrade %+v:\n%s\nwant\n%s", p, got, want)
			}
		}
	}
}

// FuzzEncodeUpgrade: an upgrade event is written as encode writes it.
func FuzzEncodeUpgrade(f *testing.F) {
	f.Add("d1", "2.0", "https://h/p", "fw.bin", "tok", "ab", "ci", int64(16384), int64(86400))
	f.Add("", "<", "&", "\"", "\\", "\u2028", "\xff", int64(-1), int64(0))
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, id, version, url, name, token, sign, info string, size, expires int64) {
		p := UpgradeParas{Version: version, URL: url, FileSize: size, FileName: name, AccessToken: token, Expires: expires, Sign: sign, CustomInfo: info}
		if got, want := EncodeUpgrade(id, true, p, now), encode(id, EventSoftwareUpgrade, p, now); string(got) != string(want) {
			t.Fatalf("got\n%s\nwant\n%s", got, want)
		}
		if got, want := EncodeVersionQuery(id, now), encode(id, EventVersionQuery, struct{}{}, now); string(got) != string(want) {
			t.Fatalf("got\n%s\nwant\n%s", got, want)
		}
	})
}
