package taskfsm

import (
	"errors"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// TestValidatePolicy checks the exported policy rules an API calls before it
// creates a task, and that Step gives the very same answer for the same
// policy: the rules are written once.
func TestValidatePolicy(t *testing.T) {
	cfg := DefaultConfig()
	at := unitT0.UnixNano()
	win := func(start, end uint32, tz string) *messages.Policy {
		return &messages.Policy{Window: &messages.Window{StartMinute: start, EndMinute: end, TimeZone: tz}}
	}
	for _, tc := range []struct {
		name    string
		p       *messages.Policy
		field   string // "" for a valid policy
		problem string
	}{
		{"none", nil, "", ""},
		{"empty", &messages.Policy{}, "", ""},
		{"limits", &messages.Policy{RetryCount: 5, RetryIntervalMinutes: 1440, ScheduleTimeUnixNano: unitT0.Add(7 * 24 * time.Hour).UnixNano()}, "", ""},
		{"past schedule", &messages.Policy{ScheduleTimeUnixNano: 1}, "", ""},
		{"window", win(1380, 60, "Asia/Shanghai"), "", ""},
		{"window UTC", win(0, 1439, ""), "", ""},
		{"retry count", &messages.Policy{RetryCount: 6, RetryIntervalMinutes: 5}, "policy.retry_count", "6, at most 5"},
		{"interval", &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 1441}, "policy.retry_interval_minutes", "1441, at most 1440"},
		{"interval alone", &messages.Policy{RetryIntervalMinutes: 3}, "policy.retry_interval_minutes", "set without a retry_count"},
		{"count alone", &messages.Policy{RetryCount: 2}, "policy.retry_interval_minutes", "0 with a retry_count; leave it unset for 5 minutes"},
		{"schedule", &messages.Policy{ScheduleTimeUnixNano: unitT0.Add(7*24*time.Hour + 1).UnixNano()}, "policy.schedule_time", "2026-03-08T00:00:00Z is more than 7 days ahead"},
		{"start", win(1440, 3, ""), "policy.window.start_minute", "1440, at most 1439"},
		{"end", win(3, 1440, ""), "policy.window.end_minute", "1440, at most 1439"},
		{"empty window", win(3, 3, ""), "policy.window.end_minute", "equals start_minute; leave the window unset for any time of day"},
		{"unknown zone", win(3, 5, "Mars/Olympus"), "policy.window.time_zone", `"Mars/Olympus" is not an IANA time zone`},
		{"Local", win(3, 5, "Local"), "policy.window.time_zone", `"Local" is not an IANA time zone`},
		{"local in any case", win(3, 5, "LOCAL"), "policy.window.time_zone", `"LOCAL" is not an IANA time zone`},
	} {
		err := cfg.ValidatePolicy(tc.p, at)
		c := validCreate("a")
		c.Policy = tc.p
		_, _, stepErr := Step(cfg, State{}, createInput(unitT0, c))
		if tc.field == "" {
			if err != nil || stepErr != nil {
				t.Errorf("%s: ValidatePolicy %v, Step %v; want both nil", tc.name, err, stepErr)
			}
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) || !errors.Is(err, ErrInvalidInput) || fe.Field != tc.field || fe.Problem != tc.problem {
			t.Errorf("%s: ValidatePolicy = %v, want a FieldError %s: %s", tc.name, err, tc.field, tc.problem)
			continue
		}
		if stepErr == nil || stepErr.Error() != err.Error() {
			t.Errorf("%s: Step says %v, ValidatePolicy %v", tc.name, stepErr, err)
		}
	}
}

// TestValidateDeviceCount: the explicit device_ids limit, as Step applies it.
func TestValidateDeviceCount(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxTargets = 3
	if err := cfg.ValidateDeviceCount(3); err != nil {
		t.Errorf("3 of 3: %v", err)
	}
	err := cfg.ValidateDeviceCount(4)
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "device_ids" || fe.Problem != "4 devices, at most 3" {
		t.Fatalf("4 of 3: %v", err)
	}
	_, _, stepErr := Step(cfg, State{}, createInput(unitT0, validCreate("a", "b", "c", "d")))
	if stepErr == nil || stepErr.Error() != err.Error() {
		t.Errorf("Step says %v, ValidateDeviceCount %v", stepErr, err)
	}
}

func TestHorizonText(t *testing.T) {
	for d, want := range map[time.Duration]string{
		7 * 24 * time.Hour: "7 days",
		24 * time.Hour:     "1 day",
		36 * time.Hour:     "36h0m0s",
		0:                  "0s",
	} {
		if got := horizonText(d); got != want {
			t.Errorf("horizonText(%v) = %q, want %q", d, got, want)
		}
	}
}
