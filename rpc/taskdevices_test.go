package rpc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/messages"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// TestTaskDeviceOutcomeTexts: ListTaskDevices gives each device the text of
// its final state (status_desc) and the description an MQTT device sent
// (device_description), for every kind of end: a device already at the
// target, a plain success, a failure, a stop, and an MQTT failure with the
// device's own words.
func TestTaskDeviceOutcomeTexts(t *testing.T) {
	specs := fwSpecs()[:3]     // fw-0 .. fw-2 answer; fw-3 never comes online
	specs[0].FwVersion = "2.0" // already at the target
	specs = append(specs, memtransport.DeviceSpec{ID: "mq-0", Protocol: messages.Protocol_PROTOCOL_MQTT, FwVersion: "1.0",
		Behaviour: memtransport.Behaviour{FailDownloads: 1}}) // result_code 7 with a description
	te := newTaskEnv(t, specs)
	f := te.fixture(t)
	ctx := context.Background()

	res, err := te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "texts", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg, DeviceIds: []string{"fw-0", "fw-1", "fw-2", "fw-3"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetTask().GetTaskId()
	devices := func(id string) map[string]*v1.TaskDevice {
		t.Helper()
		l, err := te.tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: id}))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]*v1.TaskDevice{}
		for _, d := range l.Msg.GetDevices() {
			m[d.GetDeviceId()] = d
		}
		return m
	}
	// Run until the three devices that answer have finished; fw-3 still
	// waits for its device to come online (T1, 24 h).
	end := te.clk.Now().Add(time.Hour)
	for {
		ds := devices(id)
		if ds["fw-0"].GetStatus() != v1.SubtaskStatus_SUBTASK_STATUS_PROCESSING && ds["fw-1"].GetStatus() != v1.SubtaskStatus_SUBTASK_STATUS_PROCESSING &&
			ds["fw-2"].GetStatus() != v1.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
			if ds["fw-3"].GetStatus() != v1.SubtaskStatus_SUBTASK_STATUS_PROCESSING || ds["fw-3"].GetStatusDesc() != "" {
				t.Fatalf("fw-3 %v, want PROCESSING without a status_desc", ds["fw-3"])
			}
			break
		}
		if !te.step() || te.clk.Now().After(end) {
			t.Fatalf("devices not done after an hour: %v", ds)
		}
	}
	if _, err := te.tasks.StopTask(ctx, connect.NewRequest(&v1.StopTaskRequest{TaskId: id})); err != nil {
		t.Fatal(err)
	}
	te.runTask(t, id, time.Hour)

	mq, err := te.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: f.mqtt, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0", FileName: "mq-2.0.bin", Content: []byte("mqtt firmware"),
	}))
	if err != nil {
		t.Fatal(err)
	}
	res, err = te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "mqtt_texts", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: mq.Msg.GetPackage().GetPackageId(), DeviceIds: []string{"mq-0"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	mqID := res.Msg.GetTask().GetTaskId()
	te.runTask(t, mqID, time.Hour)

	integrity := messages.ReasonText(messages.Reason_REASON_FW_INTEGRITY_CHECK)
	verification := messages.ReasonText(messages.Reason_REASON_PACKAGE_VERIFICATION_FAILED)
	got := devices(id)
	for dev, d := range devices(mqID) {
		got[dev] = d
	}
	for _, w := range []struct {
		dev                            string
		status                         v1.SubtaskStatus
		failure, desc, deviceDescribed string
	}{
		{"fw-0", v1.SubtaskStatus_SUBTASK_STATUS_SUCCESS, "", "The current version is the same as the target version", ""},
		{"fw-1", v1.SubtaskStatus_SUBTASK_STATUS_SUCCESS, "", "Upgrade succeeded", ""},
		{"fw-2", v1.SubtaskStatus_SUBTASK_STATUS_FAIL, integrity, integrity, ""},
		{"fw-3", v1.SubtaskStatus_SUBTASK_STATUS_STOPPED, "Stopped by user", "Stopped", ""},
		{"mq-0", v1.SubtaskStatus_SUBTASK_STATUS_FAIL, verification, verification, "simulated download failure"},
	} {
		d := got[w.dev]
		if d.GetStatus() != w.status || d.GetFailureReason() != w.failure || d.GetStatusDesc() != w.desc || d.GetDeviceDescription() != w.deviceDescribed {
			t.Errorf("%s: %s failure_reason %q status_desc %q device_description %q\nwant %s %q %q %q", w.dev,
				strings.TrimPrefix(d.GetStatus().String(), "SUBTASK_STATUS_"), d.GetFailureReason(), d.GetStatusDesc(), d.GetDeviceDescription(),
				strings.TrimPrefix(w.status.String(), "SUBTASK_STATUS_"), w.failure, w.desc, w.deviceDescribed)
		}
	}
}

// TestTaskDeviceStage (issue 21): at every step of a task, ListTaskDevices
// shows each running device's stage, progress and source version exactly
// as its actor holds them (read from what the actor publishes, not asked of
// it), and no stage for a device whose sub-task is not running.
func TestTaskDeviceStage(t *testing.T) {
	te := newTaskEnv(t, fwSpecs())
	f := te.fixture(t)
	ctx := context.Background()
	res, err := te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "stages", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg, DeviceIds: []string{"fw-0", "fw-1", "fw-2", "fw-3", "fw-4"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetTask().GetTaskId()
	stages := map[string]bool{}
	end := te.clk.Now().Add(24 * time.Hour)
	// CreateTask returns once the task has journaled its creation; the
	// StartJobs it sent may still wait in the devices' mailboxes, so a row
	// may say PROCESSING before its device has a job. Every comparison
	// below is made with nothing in flight (the fake clock moves nothing
	// else): settle now, and te.step settles after each advance.
	te.eng.Settle()
	for !taskDone(te.getTask(t, id).GetStatus()) {
		l, err := te.tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: id}))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range l.Msg.GetDevices() {
			if d.GetStatus() != v1.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
				if d.GetStage() != "" || d.GetProgress() != 0 {
					t.Fatalf("%s is %v yet shows stage %q %d%%", d.GetDeviceId(), d.GetStatus(), d.GetStage(), d.GetProgress())
				}
				continue
			}
			dv, err := te.eng.Device(ctx, d.GetDeviceId())
			if err != nil {
				t.Fatal(err)
			}
			s := dv.State
			want := strings.TrimPrefix(s.Stage.String(), "STAGE_")
			if s.Stage == messages.Stage_STAGE_IDLE {
				want = ""
			}
			if d.GetStage() != want || d.GetProgress() != s.Progress || (s.SourceVersion != "" && d.GetSourceVersion() != s.SourceVersion) ||
				s.Job.GetTaskId() != id || s.Job.GetAttempt() != d.GetAttempts() {
				t.Fatalf("%s shows stage %q %d%% source %q attempt %d; its actor: %v %d%% source %q job %v",
					d.GetDeviceId(), d.GetStage(), d.GetProgress(), d.GetSourceVersion(), d.GetAttempts(), s.Stage, s.Progress, s.SourceVersion, s.Job)
			}
			stages[want] = true
		}
		if !te.step() || te.clk.Now().After(end) {
			t.Fatal("task not done after a day")
		}
	}
	if !stages["DOWNLOADING"] || !stages["VERSION_QUERY"] {
		t.Fatalf("stages seen %v: want VERSION_QUERY and DOWNLOADING among them", stages)
	}
}
