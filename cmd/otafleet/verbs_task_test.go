package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// TestTaskRetryHelp: the help of `task retry` promises only what RetryTask
// does (spec 5.4): it re-runs devices of a running or finished task, never a
// stopped task, and a device waiting for its policy retry gets no extra
// attempt.
func TestTaskRetryHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"task", "retry", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("task retry --help: exit %d: %s", code, errb.String())
	}
	help := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{
		"A stopped task cannot be retried",
		"PROCESSING, FAIL or PARTIAL_SUCCESS",
		"A device waiting for its policy retry runs that retry now, without an extra attempt",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("task retry --help does not say %q:\n%s", want, out.String())
		}
	}
	for _, promise := range []string{"failed and stopped devices", "every failed or stopped one"} {
		if strings.Contains(help, promise) {
			t.Errorf("task retry --help still says %q:\n%s", promise, out.String())
		}
	}
}

// TestTaskDeviceRow: the human table of `task devices` shows each device's
// status_desc (with the device's code and the retry time) and the
// description the device itself sent.
func TestTaskDeviceRow(t *testing.T) {
	for _, tc := range []struct {
		d    *v1.TaskDevice
		want string
	}{
		{&v1.TaskDevice{DeviceId: "a", Status: v1.SubtaskStatus_SUBTASK_STATUS_SUCCESS, Attempts: 1, StatusDesc: "Upgrade succeeded", DeviceDescription: "flashed"},
			"a SUCCESS - 1 - - Upgrade succeeded flashed"},
		{&v1.TaskDevice{DeviceId: "b", Status: v1.SubtaskStatus_SUBTASK_STATUS_SUCCESS, Attempts: 1, StatusDesc: "The current version is the same as the target version"},
			"b SUCCESS - 1 - - The current version is the same as the target version -"},
		{&v1.TaskDevice{DeviceId: "c", Status: v1.SubtaskStatus_SUBTASK_STATUS_FAIL, Attempts: 2, FailureReason: "Low battery", StatusDesc: "Low battery", ResultCode: 4, DeviceDescription: "battery 3%"},
			"c FAIL - 2 - - Low battery (code 4) battery 3%"},
		{&v1.TaskDevice{DeviceId: "d", Status: v1.SubtaskStatus_SUBTASK_STATUS_STOPPED, Attempts: 1, FailureReason: "Stopped by user", StatusDesc: "Stopped"},
			"d STOPPED - 1 - - Stopped -"},
	} {
		if got := strings.Join(taskDeviceRow(tc.d), " "); got != tc.want {
			t.Errorf("taskDeviceRow(%s) =\n\t%s\nwant\n\t%s", tc.d.GetDeviceId(), got, tc.want)
		}
	}
}
