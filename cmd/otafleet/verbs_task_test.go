package main

import (
	"bytes"
	"context"
	"slices"
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

// TestTaskCellRows: the human table of `task cells` puts the cells at their
// budget first, then longer queues, and shows the coverage mixes.
func TestTaskCellRows(t *testing.T) {
	cells := []*v1.TaskCell{
		{CellId: "cell-10", UnitsInUse: 3, Budget: 50, Waiting: 0, HoldingMix: &v1.CoverageMix{Good: 3}, TaskHolding: 3,
			Holders: make([]*v1.CellHolder, 3)},
		{CellId: "cell-9", UnitsInUse: 10, Budget: 50, Waiting: 4, HeadUnits: 5, HoldingMix: &v1.CoverageMix{Medium: 2}, WaitingMix: &v1.CoverageMix{Medium: 4},
			Holders: make([]*v1.CellHolder, 2)},
		{CellId: "cell-2", UnitsInUse: 50, Budget: 50, Waiting: 2, HeadUnits: 50, Saturated: true,
			HoldingMix: &v1.CoverageMix{Poor: 1}, WaitingMix: &v1.CoverageMix{Poor: 1, CellOnly: 1}, TaskHolding: 1, TaskWaiting: 2,
			Holders: make([]*v1.CellHolder, 1)},
	}
	slices.SortStableFunc(cells, compareCells)
	var got []string
	for _, c := range cells {
		got = append(got, strings.Join(taskCellRow(c), " | "))
	}
	want := []string{
		"cell-2 | AT BUDGET | 50/50 | 1 | 2 | 50 | 1 poor | 1 poor, 1 cell-only | 1 holding, 2 waiting",
		"cell-9 | - | 10/50 | 2 | 4 | 5 | 2 medium | 4 medium | 0 holding, 0 waiting",
		"cell-10 | - | 3/50 | 3 | 0 | - | 3 good | - | 3 holding, 0 waiting",
	}
	if !slices.Equal(got, want) {
		t.Errorf("rows\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestFleetSummaryRows: `device summary` shows a row per product, then the
// total unless one product was asked for.
func TestFleetSummaryRows(t *testing.T) {
	res := &v1.GetFleetSummaryResponse{
		Total: &v1.DeviceCounts{Registered: 1_000_005, Online: 700_001, Offline: 300_004},
		Products: []*v1.ProductDeviceCounts{
			{ProductId: "meter", Devices: &v1.DeviceCounts{Registered: 1_000_000, Online: 700_000, Offline: 300_000}},
			{ProductId: "tracker", Devices: &v1.DeviceCounts{Registered: 5, Online: 1, Offline: 4}},
		},
	}
	one := &v1.GetFleetSummaryResponse{
		Total:    &v1.DeviceCounts{Registered: 5, Online: 1, Offline: 4},
		Products: []*v1.ProductDeviceCounts{{ProductId: "tracker", Devices: &v1.DeviceCounts{Registered: 5, Online: 1, Offline: 4}}},
	}
	for _, tc := range []struct {
		name      string
		res       *v1.GetFleetSummaryResponse
		withTotal bool
		want      []string
	}{
		{"fleet", res, true, []string{"meter 1000000 700000 300000", "tracker 5 1 4", "total 1000005 700001 300004"}},
		{"one product", one, false, []string{"tracker 5 1 4"}},
		{"empty fleet", &v1.GetFleetSummaryResponse{Total: &v1.DeviceCounts{}}, true, []string{"total 0 0 0"}},
		{"missing counts", &v1.GetFleetSummaryResponse{Products: []*v1.ProductDeviceCounts{{ProductId: "p"}}}, true, []string{"p 0 0 0", "total 0 0 0"}},
	} {
		var got []string
		for _, r := range fleetSummaryRows(tc.res, tc.withTotal) {
			got = append(got, strings.Join(r, " "))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: rows\n%s\nwant\n%s", tc.name, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
	}
}
