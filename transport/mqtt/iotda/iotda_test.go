package iotda

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/prototext"
)

func TestPasswordVector(t *testing.T) {
	// Spec 2.1, verified against IoTDA's documented example.
	const want = "c75150e6cb841417396819e4d2ee4358a416344a03a083e3a8567074ddec820a"
	if got := Password("12345678", "2025041401"); got != want {
		t.Fatalf("Password = %s, want %s", got, want)
	}
	if !CheckPassword("12345678", "2025041401", []byte(strings.ToUpper(want))) {
		t.Error("upper-case hex refused")
	}
	for _, bad := range []string{"", "zz", want[:62], want + "00", strings.Replace(want, "c", "d", 1)} {
		if CheckPassword("12345678", "2025041401", []byte(bad)) {
			t.Errorf("password %q accepted", bad)
		}
	}
}

func TestParseClientID(t *testing.T) {
	c, err := ParseClientID("meter_7_0_1_2025041401")
	if err != nil {
		t.Fatal(err)
	}
	if c.DeviceID != "meter_7" || c.SignType != SignTimestampCheck || c.Timestamp != "2025041401" ||
		!c.Time.Equal(time.Date(2025, 4, 14, 1, 0, 0, 0, time.UTC)) || c.String() != "meter_7_0_1_2025041401" {
		t.Fatalf("parsed %+v", c)
	}
	for _, bad := range []string{
		"", "meter", "meter_0_1", "_0_1_2025041401", "meter_3_0_2025041401", "meter_0_2_2025041401",
		"meter_0_1_20250414", "meter_0_1_2025041425", "meter_0_1_202504140x", "\xff_0_0_2025041401",
		strings.Repeat("a", 300) + "_0_0_2025041401",
	} {
		if _, err := ParseClientID(bad); !errors.Is(err, ErrClientID) {
			t.Errorf("ParseClientID(%q) = %v", bad, err)
		}
	}
	now := time.Date(2025, 4, 14, 1, 30, 0, 0, time.UTC)
	if err := CheckTimestamp(c, now, 10*time.Minute); err != nil {
		t.Error(err)
	}
	if err := CheckTimestamp(c, now.Add(2*time.Hour), 10*time.Minute); err == nil {
		t.Error("a timestamp two hours old passed")
	}
	c.SignType = SignNoTimestampCheck
	if err := CheckTimestamp(c, now.Add(48*time.Hour), 0); err != nil {
		t.Errorf("sign type 0 checked the timestamp: %v", err)
	}
	if n := NewClientID("d_1", now); n.String() != "d_1_0_1_2025041401" {
		t.Errorf("NewClientID = %s", n)
	}
}

func TestTopics(t *testing.T) {
	if UpTopic("d1") != "$oc/devices/d1/sys/events/up" || DownTopic("d1") != "$oc/devices/d1/sys/events/down" {
		t.Fatal(UpTopic("d1"), DownTopic("d1"))
	}
	for topic, want := range map[string]string{
		"$oc/devices/d1/sys/events/up": "d1 sys/events/up",
		"$oc/devices/d1":               "d1 ",
		"$oc/devices/+/sys/events/up":  "",
		"$oc/devices//x":               "",
		"devices/d1/sys":               "",
	} {
		id, rest, ok := ParseTopic(topic)
		got := ""
		if ok {
			got = id + " " + rest
		}
		if got != want {
			t.Errorf("ParseTopic(%q) = %q, want %q", topic, got, want)
		}
	}
}

func decodeText(t *testing.T, payload string) string {
	t.Helper()
	u, err := DecodeUplink("d1", []byte(payload))
	if err != nil {
		return "error: " + err.Error()
	}
	var parts []string
	for _, in := range u.Inputs {
		// prototext varies its spacing on purpose: normalise it.
		parts = append(parts, strings.Join(strings.Fields(prototext.MarshalOptions{}.Format(in)), " "))
	}
	for _, ig := range u.Ignored {
		parts = append(parts, "ignored "+ig)
	}
	return strings.Join(parts, " | ")
}

func TestDecodeUplink(t *testing.T) {
	for _, c := range []struct{ payload, want string }{
		{`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1.0","sw_version":"2.1"}}]}`,
			`version_reported:{fw_version:"1.0" sw_version:"2.1"}`},
		{`{"object_device_id":"d1","services":[{"service_id":"$ota","event_type":"version_report","event_time":"20251212T121212Z","paras":{"sw_version":"2"}}]}`,
			`version_reported:{sw_version:"2"}`},
		{`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":0,"progress":50,"version":"1.0"}}]}`,
			`mqtt_progress:{progress:50 version:"1.0"}`},
		{`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":7,"version":"1.0","description":"sha256 mismatch"}}]}`,
			`mqtt_progress:{result_code:7 version:"1.0" description:"sha256 mismatch"}`},
		{`{"services":[{"service_id":"$time_sync","event_type":"time_sync_request","paras":{}},{"service_id":"$ota","event_type":"something_new","paras":{}}]}`,
			`ignored service "$time_sync" event "time_sync_request" | ignored $ota event "something_new"`},
		{`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{}}]}`, `error`},
		{`{"services":[{"service_id":"$ota","event_type":"version_report"}]}`, `error`},
		{`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"progress":10,"version":"1"}}]}`, `error`},
		{`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":1.5,"version":"1"}}]}`, `error`},
		{`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":0,"progress":101,"version":"1"}}]}`, `error`},
		{`{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"result_code":0}}]}`, `error`},
		{`{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":7}}]}`, `error`},
		{`{"object_device_id":"child","services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1"}}]}`, `error`},
		{`{"services":[]}`, `error`},
		{`not json`, `error`},
		{`[]`, `error`},
	} {
		got := decodeText(t, c.payload)
		if c.want == "error" && strings.HasPrefix(got, "error: ") {
			continue
		}
		if got != c.want {
			t.Errorf("%s\n got %s\nwant %s", c.payload, got, c.want)
		}
	}
	if _, err := DecodeUplink("d1", make([]byte, MaxPayload+1)); !errors.Is(err, ErrMalformed) {
		t.Errorf("oversized payload: %v", err)
	}
}

func TestEncodeAndDecodeDownlink(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	q := EncodeVersionQuery("d1", now)
	if string(q) != `{"object_device_id":"d1","services":[{"service_id":"$ota","event_type":"version_query","event_time":"20261123T160000Z","paras":{}}]}` {
		t.Fatalf("version_query = %s", q)
	}
	p := UpgradeParas{Version: "2.0", URL: "https://127.0.0.1:8943/packages/k1", FileSize: 1234, FileName: "fw.bin",
		AccessToken: "tok", Expires: 86400, Sign: strings.Repeat("ab", 32), CustomInfo: "ci"}
	up := EncodeUpgrade("d1", false, p, now)
	var raw map[string]any
	if err := json.Unmarshal(up, &raw); err != nil {
		t.Fatal(err)
	}
	paras := raw["services"].([]any)[0].(map[string]any)["paras"].(map[string]any)
	for _, k := range []string{"version", "url", "file_size", "file_name", "access_token", "expires", "sign", "custom_info"} {
		if _, ok := paras[k]; !ok {
			t.Errorf("paras lack %s: %s", k, up)
		}
	}
	d, ok, err := DecodeDownlink(up)
	if err != nil || !ok || d.EventType != EventFirmwareUpgrade || *d.Upgrade != p {
		t.Fatalf("DecodeDownlink = %+v %v %v", d, ok, err)
	}
	p.Sign, p.AccessToken, p.Expires = "", "", 0 // omit_sign, v2-style
	sw := EncodeUpgrade("d1", true, p, now)
	if strings.Contains(string(sw), "sign") || strings.Contains(string(sw), "access_token") || !strings.Contains(string(sw), `"software_upgrade"`) {
		t.Errorf("software_upgrade without sign = %s", sw)
	}
	fw := "1.0"
	if got := decodeText(t, string(EncodeVersionReport("d1", &fw, nil, now))); got != `version_reported:{fw_version:"1.0"}` {
		t.Errorf("version report round trip: %s", got)
	}
	pr := 100
	if got := decodeText(t, string(EncodeProgress("d1", Progress{ResultCode: 0, Progress: &pr, Version: "2.0"}, now))); got != `mqtt_progress:{progress:100 version:"2.0"}` {
		t.Errorf("progress round trip: %s", got)
	}
	if _, ok, err := DecodeDownlink([]byte(`{"services":[{"service_id":"$x","event_type":"y"}]}`)); ok || err != nil {
		t.Errorf("non-$ota downlink: %v %v", ok, err)
	}
	if _, _, err := DecodeDownlink([]byte(`{"services":[{"service_id":"$ota","event_type":"firmware_upgrade"}]}`)); err == nil {
		t.Error("upgrade without paras decoded")
	}
}

// TestDecodeUplinkServiceCap: an uplink with MaxServices services is
// decoded; one more, or the 12,600 services of a 1 MiB publish, refuses the
// whole message with ErrTooManyServices.
func TestDecodeUplinkServiceCap(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	fw := "1.0"
	one := string(EncodeVersionReport("d1", &fw, nil, now))
	svc := one[strings.Index(one, `[`)+1 : strings.LastIndex(one, `]`)]
	payload := func(n int) []byte {
		return []byte(`{"services":[` + strings.TrimSuffix(strings.Repeat(svc+",", n), ",") + `]}`)
	}
	u, err := DecodeUplink("d1", payload(MaxServices))
	if err != nil || len(u.Inputs) != MaxServices {
		t.Fatalf("%d services: %d inputs, %v", MaxServices, len(u.Inputs), err)
	}
	for _, n := range []int{MaxServices + 1, 12600} {
		p := payload(n)
		if len(p) > MaxPayload {
			p = payload(MaxPayload / (len(svc) + 1))
		}
		u, err := DecodeUplink("d1", p)
		if !errors.Is(err, ErrTooManyServices) || !errors.Is(err, ErrMalformed) || len(u.Inputs) != 0 {
			t.Fatalf("%d bytes of services: %d inputs, error %v", len(p), len(u.Inputs), err)
		}
	}
}

func TestIsUpTopic(t *testing.T) {
	for _, c := range []struct {
		topic, device string
		want          bool
	}{
		{UpTopic("d1"), "d1", true},
		{UpTopic("d_1"), "d_1", true},
		{UpTopic("d1"), "d", false},
		{UpTopic("d1"), "d12", false},
		{DownTopic("d1"), "d1", false},
		{"$oc/devices/d1/sys/events/upx", "d1", false},
		{"$oc/devices/d2/sys/events/up", "d1", false},
		{"$OC/devices/d1/sys/events/up", "d1", false},
		{"", "", false},
	} {
		if got := IsUpTopic(c.topic, c.device); got != c.want {
			t.Errorf("IsUpTopic(%q, %q) = %v", c.topic, c.device, got)
		}
	}
}
