package messages

import (
	"testing"
	"time"
)

func TestEveryReasonHasText(t *testing.T) {
	seen := map[string]Reason{}
	for v, name := range Reason_name {
		r := Reason(v)
		txt := ReasonText(r)
		if r != Reason_REASON_NONE && txt == "" {
			t.Errorf("%s has no text", name)
		}
		if _, ok := reasonText[r]; !ok {
			t.Errorf("%s is missing from the text table", name)
		}
		if other, dup := seen[txt]; dup {
			t.Errorf("%s and %s share the text %q", name, other, txt)
		}
		seen[txt] = r
		back, ok := ReasonFromText(txt)
		if !ok || back != r {
			t.Errorf("ReasonFromText(%q) = %v, %v; want %v", txt, back, ok, r)
		}
	}
	if got := ReasonText(Reason(9999)); got != "unknown reason 9999" {
		t.Errorf("unknown reason text = %q", got)
	}
	if _, ok := ReasonFromText("no such reason"); ok {
		t.Error("ReasonFromText accepted an unknown string")
	}
}

// TestSpecStrings pins the strings of spec 5.10 byte for byte: users search for them.
func TestSpecStrings(t *testing.T) {
	want := map[Reason]string{
		Reason_REASON_DEVICE_ABNORMAL:        "Device Abnormal is not online",
		Reason_REASON_TASK_CONFLICT:          "Task Conflict",
		Reason_REASON_ONLINE_TIMEOUT:         "Waiting for the device online timeout",
		Reason_REASON_VERSION_REPORT_TIMEOUT: "Waiting for report device firmware version timeout",
		Reason_REASON_CELL_ID_TIMEOUT:        "Waiting for report cellId timeout",
		Reason_REASON_DOWNLOAD_START_TIMEOUT: "Waiting for device start download package timeout",
		Reason_REASON_DOWNLOAD_TIMEOUT:       "Waiting for device downloaded package timeout",
		Reason_REASON_UPDATE_START_TIMEOUT:   "Waiting for device start to update timeout",
		Reason_REASON_RESULT_TIMEOUT:         "Wait for the device to report upgrade result timeout",
		Reason_REASON_VERSION_CHECK_TIMEOUT:  "Updating timeout and query device version for check timeout",
		Reason_REASON_SAME_VERSION:           "The current version is the same as the target version",
		Reason_REASON_VERSION_MISMATCH:       "Device version after upgrade does not match the target version",
	}
	for r, s := range want {
		if got := ReasonText(r); got != s {
			t.Errorf("%v: %q, want %q", r, got, s)
		}
	}
}

func TestTimeRoundTrip(t *testing.T) {
	if UnixNano(time.Time{}) != 0 || !Time(0).IsZero() {
		t.Fatal("zero time does not map to 0")
	}
	at := time.Date(2026, 11, 23, 13, 0, 0, 5, time.UTC)
	if got := Time(UnixNano(at)); !got.Equal(at) {
		t.Fatalf("round trip: %v != %v", got, at)
	}
}
