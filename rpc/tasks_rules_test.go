package rpc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// TestTaskRuleMessages pins what an API user reads when a request breaks one
// of the task's rules (taskfsm's, checked before the task is created), and
// that a request at each limit is accepted.
func TestTaskRuleMessages(t *testing.T) {
	te := newTaskEnv(t, fwSpecs())
	f := te.fixture(t)
	ctx := context.Background()
	u32 := func(v uint32) *uint32 { return &v }
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("x%d", i)
		}
		return out
	}
	win := func(start, end uint32, tz string) *v1.Policy {
		return &v1.Policy{Window: &v1.Window{StartMinute: start, EndMinute: end, TimeZone: tz}}
	}
	for _, tc := range []struct {
		name   string
		ids    []string
		policy *v1.Policy
		want   string
	}{
		{"devices", ids(30001), nil, "invalid_argument: device_ids: 30001 devices, at most 30000"},
		{"retry count", nil, &v1.Policy{RetryCount: u32(6)}, "invalid_argument: policy.retry_count: 6, at most 5"},
		{"interval", nil, &v1.Policy{RetryCount: u32(1), RetryIntervalMinutes: u32(1441)}, "invalid_argument: policy.retry_interval_minutes: 1441, at most 1440"},
		{"interval alone", nil, &v1.Policy{RetryIntervalMinutes: u32(3)}, "invalid_argument: policy.retry_interval_minutes: set without a retry_count"},
		{"interval 0", nil, &v1.Policy{RetryCount: u32(2), RetryIntervalMinutes: u32(0)}, "invalid_argument: policy.retry_interval_minutes: 0 with a retry_count; leave it unset for 5 minutes"},
		{"schedule", nil, &v1.Policy{ScheduleTime: timestamppb.New(taskEpoch.Add(7*24*time.Hour + time.Second))}, "invalid_argument: policy.schedule_time: 2026-06-08T08:00:01Z is more than 7 days ahead"},
		{"start", nil, win(1440, 3, ""), "invalid_argument: policy.window.start_minute: 1440, at most 1439"},
		{"end", nil, win(3, 1440, ""), "invalid_argument: policy.window.end_minute: 1440, at most 1439"},
		{"empty window", nil, win(3, 3, ""), "invalid_argument: policy.window.end_minute: equals start_minute; leave the window unset for any time of day"},
		{"zone", nil, win(3, 5, "Mars/Olympus"), `invalid_argument: policy.window.time_zone: "Mars/Olympus" is not an IANA time zone`},
		{"Local", nil, win(3, 5, "Local"), `invalid_argument: policy.window.time_zone: "Local" is not an IANA time zone`},
		{"local", nil, win(3, 5, "local"), `invalid_argument: policy.window.time_zone: "local" is not an IANA time zone`},
		{"zone text", nil, win(3, 5, "Europe/\x01"), "invalid_argument: policy.window.time_zone: contains the control character U+0001"},
	} {
		req := &v1.CreateTaskRequest{Name: "rules", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg, DeviceIds: tc.ids, Policy: tc.policy}
		if req.DeviceIds == nil {
			req.DeviceIds = []string{"fw-0"}
		}
		_, err := te.tasks.CreateTask(ctx, connect.NewRequest(req))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got %v\nwant %s", tc.name, err, tc.want)
		}
	}

	// The limits themselves are accepted.
	res, err := te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "limits", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg, DeviceIds: []string{"fw-0"},
		Policy: &v1.Policy{RetryCount: u32(5), RetryIntervalMinutes: u32(1440), ScheduleTime: timestamppb.New(taskEpoch.Add(7 * 24 * time.Hour)),
			Window: &v1.Window{StartMinute: 1439, EndMinute: 0, TimeZone: "Europe/Berlin"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetTask().GetTaskId()
	_, err = te.tasks.RetryTask(ctx, connect.NewRequest(&v1.RetryTaskRequest{TaskId: id, DeviceIds: ids(30001)}))
	if want := "invalid_argument: device_ids: 30001 devices, at most 30000"; err == nil || err.Error() != want {
		t.Errorf("RetryTask: got %v, want %s", err, want)
	}
}
