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
	f.Fuzz(func(t *testing.T, payload []byte) {
		u, err := DecodeUplink("d1", payload)
		if len(payload) <= MaxPayload {
			parts, perr := decodeUplinkInParts("d1", payload)
			if fmt.Sprint(err) != fmt.Sprint(perr) || !slices.Equal(u.Ignored, parts.Ignored) ||
				!slices.EqualFunc(u.Inputs, parts.Inputs, func(a, b *messages.DeviceInput) bool { return proto.Equal(a, b) }) {
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
