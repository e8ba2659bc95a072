package rpc_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/rpc"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
	"github.com/otafleet/otafleet/transport"
)

var taskEpoch = time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC)

// taskEnv is env with a real engine over scripted LwM2M devices on a fake
// clock, and a TaskService client.
type taskEnv struct {
	*env
	clk   *clocktest.Clock
	eng   *actors.Engine
	tr    *memtransport.Transport
	tasks otafleetv1connect.TaskServiceClient
}

func newTaskEnv(t *testing.T, specs []memtransport.DeviceSpec) *taskEnv {
	t.Helper()
	ctx := context.Background()
	clk := clocktest.New(taskEpoch)
	st := &blobLog{Store: memstore.New()}
	up := &transport.LateUplinks{}
	tr, err := memtransport.New(memtransport.Config{}, clk, up, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	for _, s := range specs {
		if err := tr.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	eng, err := actors.New(actors.Config{}, actors.Deps{Store: st, Clock: clk, Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	up.Set(eng)
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Stop)
	e := serve(t, st, rpc.Deps{Registry: st, Engine: eng, Store: st, Sessions: st, Token: testToken, Clock: clk})
	te := &taskEnv{env: e, clk: clk, eng: eng, tr: tr, tasks: otafleetv1connect.NewTaskServiceClient(e.http, e.url)}
	if err := tr.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	eng.Settle()
	return te
}

// step advances the fake clock to its next timer and lets the actors
// settle; false when no timer is armed.
func (te *taskEnv) step() bool {
	te.eng.Settle() // what a call just sent may still be in flight
	next, ok := te.clk.NextDeadline()
	if !ok {
		return false
	}
	te.clk.AdvanceTo(next)
	te.eng.Settle()
	return true
}

func (te *taskEnv) getTask(t *testing.T, id string) *v1.Task {
	t.Helper()
	res, err := te.tasks.GetTask(context.Background(), connect.NewRequest(&v1.GetTaskRequest{TaskId: id}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetTask()
}

func taskDone(s v1.TaskStatus) bool { return messages.TaskStatus(s).Final() }

// runTask drives the clock until task id has finished (at most limit of
// protocol time).
func (te *taskEnv) runTask(t *testing.T, id string, limit time.Duration) *v1.Task {
	t.Helper()
	end := te.clk.Now().Add(limit)
	for {
		task := te.getTask(t, id)
		if taskDone(task.GetStatus()) {
			return task
		}
		if !te.step() || te.clk.Now().After(end) {
			t.Fatalf("task %s not done after %v: %v", id, limit, task)
		}
	}
}

func lwm2mSpec(id string) memtransport.DeviceSpec {
	rsrp, sinr := int32(-90), int32(12)
	return memtransport.DeviceSpec{
		ID: id, Protocol: messages.Protocol_PROTOCOL_LWM2M_FOTA, FwVersion: "1.0",
		CellID: "cell-1", RSRP: &rsrp, SINR: &sinr,
	}
}

// fixture registers an LwM2M product with devices fw-0..fw-4 (fw-3 and
// fw-4 through a group), an MQTT product with mq-0, and a firmware package
// 2.0 of the LwM2M product.
type fixture struct {
	lwm2m, mqtt, pkg, group string
}

func (te *taskEnv) fixture(t *testing.T) fixture {
	t.Helper()
	ctx := context.Background()
	var f fixture
	f.lwm2m = te.mustProduct(t, v1.Protocol_PROTOCOL_LWM2M, false)
	f.mqtt = te.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	if _, err := te.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: f.lwm2m, Devices: newDevices("fw-", 5)})); err != nil {
		t.Fatal(err)
	}
	if _, err := te.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: f.mqtt, Devices: newDevices("mq-", 1)})); err != nil {
		t.Fatal(err)
	}
	g, err := te.groups.CreateGroup(ctx, connect.NewRequest(&v1.CreateGroupRequest{Name: "late", DeviceIds: []string{"fw-3", "fw-4"}}))
	if err != nil {
		t.Fatal(err)
	}
	f.group = g.Msg.GetGroup().GetGroupId()
	p, err := te.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: f.lwm2m, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0",
		SourceVersions: []string{"1.0"}, FileName: "fw-2.0.bin", Content: []byte(strings.Repeat("firmware", 512)),
	}))
	if err != nil {
		t.Fatal(err)
	}
	f.pkg = p.Msg.GetPackage().GetPackageId()
	return f
}

func fwSpecs() []memtransport.DeviceSpec {
	var specs []memtransport.DeviceSpec
	for i := range 5 {
		s := lwm2mSpec(fmt.Sprintf("fw-%d", i))
		if i == 2 {
			s.Behaviour.FailDownloads = 1 // integrity check failure
		}
		specs = append(specs, s)
	}
	return specs
}

func TestCreateTaskInvalid(t *testing.T) {
	te := newTaskEnv(t, fwSpecs())
	f := te.fixture(t)
	ctx := context.Background()
	u32 := func(v uint32) *uint32 { return &v }
	many := make([]string, 30001)
	for i := range many {
		many[i] = fmt.Sprintf("x%d", i)
	}
	base := func() *v1.CreateTaskRequest {
		return &v1.CreateTaskRequest{Name: "upgrade_1", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg, DeviceIds: []string{"fw-0"}}
	}
	for _, tc := range []struct {
		name  string
		edit  func(*v1.CreateTaskRequest)
		code  connect.Code
		field string
	}{
		{"no name", func(r *v1.CreateTaskRequest) { r.Name = "" }, connect.CodeInvalidArgument, "name"},
		{"bad name", func(r *v1.CreateTaskRequest) { r.Name = "a b" }, connect.CodeInvalidArgument, "name"},
		{"long name", func(r *v1.CreateTaskRequest) { r.Name = strings.Repeat("名", 129) }, connect.CodeInvalidArgument, "name"},
		{"unknown enum", func(r *v1.CreateTaskRequest) { r.TaskType = 7 }, connect.CodeInvalidArgument, "task_type"},
		{"no type", func(r *v1.CreateTaskRequest) { r.TaskType = 0 }, connect.CodeInvalidArgument, "task_type"},
		{"type mismatch", func(r *v1.CreateTaskRequest) { r.TaskType = v1.TaskType_TASK_TYPE_SOFTWARE_UPGRADE }, connect.CodeInvalidArgument, "package_id"},
		{"unknown package", func(r *v1.CreateTaskRequest) { r.PackageId = "nope" }, connect.CodeNotFound, "package_id"},
		{"no package", func(r *v1.CreateTaskRequest) { r.PackageId = "" }, connect.CodeInvalidArgument, "package_id"},
		{"no targets", func(r *v1.CreateTaskRequest) { r.DeviceIds = nil }, connect.CodeInvalidArgument, "device_ids"},
		{"30001 devices", func(r *v1.CreateTaskRequest) { r.DeviceIds = many }, connect.CodeInvalidArgument, "device_ids"},
		{"unknown device", func(r *v1.CreateTaskRequest) { r.DeviceIds = []string{"fw-0", "ghost"} }, connect.CodeNotFound, "device_ids[1]"},
		{"other product", func(r *v1.CreateTaskRequest) { r.DeviceIds = []string{"mq-0"} }, connect.CodeInvalidArgument, "device_ids[0]"},
		{"bad device id", func(r *v1.CreateTaskRequest) { r.DeviceIds = []string{"a/b"} }, connect.CodeInvalidArgument, "device_ids[0]"},
		{"unknown group", func(r *v1.CreateTaskRequest) { r.GroupIds = []string{"nogroup"} }, connect.CodeNotFound, "group_ids[0]"},
		{"retry_count 6", func(r *v1.CreateTaskRequest) { r.Policy = &v1.Policy{RetryCount: u32(6)} }, connect.CodeInvalidArgument, "policy.retry_count"},
		{"interval 1441", func(r *v1.CreateTaskRequest) {
			r.Policy = &v1.Policy{RetryCount: u32(1), RetryIntervalMinutes: u32(1441)}
		}, connect.CodeInvalidArgument, "policy.retry_interval_minutes"},
		{"interval alone", func(r *v1.CreateTaskRequest) { r.Policy = &v1.Policy{RetryIntervalMinutes: u32(3)} }, connect.CodeInvalidArgument, "policy.retry_interval_minutes"},
		{"schedule 8 days", func(r *v1.CreateTaskRequest) {
			r.Policy = &v1.Policy{ScheduleTime: timestamppb.New(taskEpoch.Add(8 * 24 * time.Hour))}
		}, connect.CodeInvalidArgument, "policy.schedule_time"},
		{"window start", func(r *v1.CreateTaskRequest) {
			r.Policy = &v1.Policy{Window: &v1.Window{StartMinute: 1440, EndMinute: 3}}
		}, connect.CodeInvalidArgument, "policy.window.start_minute"},
		{"window empty", func(r *v1.CreateTaskRequest) { r.Policy = &v1.Policy{Window: &v1.Window{StartMinute: 3, EndMinute: 3}} }, connect.CodeInvalidArgument, "policy.window"},
		{"window zone", func(r *v1.CreateTaskRequest) {
			r.Policy = &v1.Policy{Window: &v1.Window{StartMinute: 3, EndMinute: 5, TimeZone: "Mars/Olympus"}}
		}, connect.CodeInvalidArgument, "policy.window.time_zone"},
	} {
		req := base()
		tc.edit(req)
		_, err := te.tasks.CreateTask(ctx, connect.NewRequest(req))
		if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: got %v, want %v naming %s", tc.name, err, tc.code, tc.field)
		}
	}

	// A software task on an LwM2M product without PCP.
	sw, err := te.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: f.lwm2m, PackageType: v1.PackageType_PACKAGE_TYPE_SOFTWARE, Version: "2.0", FileName: "sw.bin", Content: []byte{1, 2, 3},
	}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "sw", TaskType: v1.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, PackageId: sw.Msg.GetPackage().GetPackageId(), DeviceIds: []string{"fw-0"},
	}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "no software upgrade protocol") {
		t.Errorf("software task without PCP: %v", err)
	}

	// Unknown tasks.
	_, err = te.tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: "0123456789abcdef01234567"}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = te.tasks.StopTask(ctx, connect.NewRequest(&v1.StopTaskRequest{TaskId: "0123456789abcdef01234567"}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = te.tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{}))
	wantCode(t, err, connect.CodeInvalidArgument)
	if l, err := te.tasks.ListTasks(ctx, connect.NewRequest(&v1.ListTasksRequest{})); err != nil || len(l.Msg.GetTasks()) != 0 {
		t.Fatalf("ListTasks before any task: %v %v", l, err)
	}

	// A valid task with defaults filled in; scheduled, so it waits.
	sched := taskEpoch.Add(24 * time.Hour)
	res, err := te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "later", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg,
		DeviceIds: []string{"fw-1", "fw-0", "fw-1"}, GroupIds: []string{f.group},
		Policy: &v1.Policy{RetryCount: u32(2), ScheduleTime: timestamppb.New(sched)},
	}))
	if err != nil {
		t.Fatal(err)
	}
	task := res.Msg.GetTask()
	if len(task.GetTaskId()) != 24 || task.GetStatus() != v1.TaskStatus_TASK_STATUS_WAITING ||
		task.GetProgress().GetTotal() != 4 || task.GetProgress().GetWaiting() != 4 ||
		task.GetPolicy().GetRetryIntervalMinutes() != 5 || task.GetPolicy().GetRetryCount() != 2 ||
		!task.GetPolicy().GetScheduleTime().AsTime().Equal(sched) || task.GetPackageId() != f.pkg ||
		!task.GetCreateTime().AsTime().Equal(taskEpoch) || strings.Join(task.GetGroupIds(), ",") != f.group {
		t.Errorf("created %v", task)
	}
	l, err := te.tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: task.GetTaskId()}))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range l.Msg.GetDevices() {
		got = append(got, d.GetDeviceId())
		if d.GetStartTime() != nil || d.GetAttempts() != 0 {
			t.Errorf("%s: start_time %v, attempts %d before the schedule time", d.GetDeviceId(), d.GetStartTime(), d.GetAttempts())
		}
	}
	if strings.Join(got, ",") != "fw-0,fw-1,fw-3,fw-4" {
		t.Errorf("targets %v", got)
	}
}

// TestTaskLifecycle runs a firmware task over explicit devices and a group
// of scripted LwM2M devices to its end while a WatchTask stream follows it,
// then reads its counters, its devices, a device's timeline, and retries
// the failed device.
func TestTaskLifecycle(t *testing.T) {
	te := newTaskEnv(t, fwSpecs())
	f := te.fixture(t)
	ctx := context.Background()
	res, err := te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "fleet_2_0", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg,
		DeviceIds: []string{"fw-2", "fw-0", "fw-1"}, GroupIds: []string{f.group},
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetTask().GetTaskId()
	if p := res.Msg.GetTask().GetProgress(); p.GetTotal() != 5 {
		t.Fatalf("created %v", res.Msg.GetTask())
	}

	// Watch from another goroutine; the first state arrives at once.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := te.tasks.WatchTask(wctx, connect.NewRequest(&v1.WatchTaskRequest{TaskId: id}))
	if err != nil {
		t.Fatal(err)
	}
	states := make(chan *v1.Task, 1000)
	watchErr := make(chan error, 1)
	go func() {
		defer close(states)
		for stream.Receive() {
			states <- stream.Msg().GetTask()
		}
		watchErr <- stream.Err()
	}()
	first, ok := <-states
	if !ok || first.GetTaskId() != id || taskDone(first.GetStatus()) || first.GetProgress().GetTotal() != 5 {
		t.Fatalf("first watched state %v", first)
	}

	final := te.runTask(t, id, 24*time.Hour)
	p := final.GetProgress()
	if final.GetStatus() != v1.TaskStatus_TASK_STATUS_PARTIAL_SUCCESS || p.GetTotal() != 5 || p.GetSuccess() != 4 || p.GetFail() != 1 ||
		p.GetWaiting()+p.GetProcessing()+p.GetFailWaitRetry()+p.GetStopped() != 0 {
		t.Fatalf("final %v", final)
	}

	// The watcher sees the final state and ends: keep the clock moving
	// until it does.
	var last *v1.Task
	n := 1
	for done := false; !done; {
		select {
		case s, ok := <-states:
			if !ok {
				done = true
				break
			}
			last = s
			n++
		default:
			te.clk.Advance(500 * time.Millisecond)
			runtime.Gosched()
		}
	}
	if err := <-watchErr; err != nil {
		t.Fatalf("watch: %v", err)
	}
	if last == nil || last.GetStatus() != v1.TaskStatus_TASK_STATUS_PARTIAL_SUCCESS || last.GetProgress().GetSuccess() != 4 {
		t.Fatalf("last watched state %v (of %d)", last, n)
	}

	// Devices: the failed one, then pages of two.
	fails, err := te.tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{
		TaskId: id, Status: v1.SubtaskStatus_SUBTASK_STATUS_FAIL.Enum(),
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := messages.ReasonText(messages.Reason_REASON_FW_INTEGRITY_CHECK)
	if ds := fails.Msg.GetDevices(); len(ds) != 1 || ds[0].GetDeviceId() != "fw-2" || ds[0].GetFailureReason() != want ||
		ds[0].GetAttempts() != 1 || ds[0].GetStage() != "" || fails.Msg.GetNextPageToken() != "" ||
		ds[0].GetSourceVersion() != "1.0" || ds[0].GetUpdateTime() == nil || ds[0].GetNextRetryTime() != nil {
		t.Fatalf("failed devices %v", fails.Msg)
	}
	// Its attempt started when the task did (all targets start at once) and
	// before it failed.
	firstStart := fails.Msg.GetDevices()[0].GetStartTime()
	if created := res.Msg.GetTask().GetCreateTime().AsTime(); firstStart == nil || !firstStart.AsTime().Equal(created) ||
		firstStart.AsTime().After(fails.Msg.GetDevices()[0].GetUpdateTime().AsTime()) {
		t.Fatalf("fw-2 start_time %v: want the creation time %v, not after update_time %v", firstStart, created,
			fails.Msg.GetDevices()[0].GetUpdateTime())
	}
	var pages [][]string
	token := ""
	for {
		l, err := te.tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: id, PageSize: 2, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		var page []string
		for _, d := range l.Msg.GetDevices() {
			page = append(page, d.GetDeviceId()+":"+strings.TrimPrefix(d.GetStatus().String(), "SUBTASK_STATUS_"))
			if d.GetStatus() == v1.SubtaskStatus_SUBTASK_STATUS_SUCCESS && d.GetFailureReason() != "" {
				t.Errorf("%s: failure_reason %q", d.GetDeviceId(), d.GetFailureReason())
			}
		}
		pages = append(pages, page)
		token = l.Msg.GetNextPageToken()
		if token == "" {
			break
		}
	}
	if got := fmt.Sprint(pages); got != "[[fw-0:SUCCESS fw-1:SUCCESS] [fw-2:FAIL fw-3:SUCCESS] [fw-4:SUCCESS]]" {
		t.Errorf("pages %s", got)
	}
	succ, err := te.tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{
		TaskId: id, Status: v1.SubtaskStatus_SUBTASK_STATUS_SUCCESS.Enum(), PageSize: 3, PageToken: "3",
	}))
	if err != nil || len(succ.Msg.GetDevices()) != 1 || succ.Msg.GetDevices()[0].GetDeviceId() != "fw-4" || succ.Msg.GetNextPageToken() != "" {
		t.Errorf("successes from 3: %v %v", succ, err)
	}
	_, err = te.tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: id, PageToken: "x"}))
	wantCode(t, err, connect.CodeInvalidArgument)

	// A finished task cannot stop, and the message says so plainly.
	_, err = te.tasks.StopTask(ctx, connect.NewRequest(&v1.StopTaskRequest{TaskId: id}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	wantPlain(t, err, fmt.Sprintf("task %q has already finished (PARTIAL_SUCCESS); only a waiting or processing task can be stopped", id))

	// The failed device's timeline: its job, stages, reports and outcome.
	tl, err := te.devices.GetDeviceTimeline(ctx, connect.NewRequest(&v1.GetDeviceTimelineRequest{DeviceId: "fw-2", PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	entries := tl.Msg.GetEntries()
	var text []string
	for _, e := range entries {
		text = append(text, e.GetKind()+"|"+e.GetTaskId()+"|"+e.GetDetail())
	}
	all := strings.Join(text, "\n")
	for _, w := range []string{
		"presence||online",
		"job|" + id + "|accepted attempt 1: firmware upgrade to 2.0 over LWM2M_FOTA",
		"stage|" + id + "|stage VERSION_QUERY, deadline ",
		"report|" + id + "|reported fw_version 1.0",
		"stage|" + id + "|stage DOWNLOADING",
		"outcome|" + id + "|finished FAIL: " + want,
		"permit|" + id + "|released the download slot of cell cell-1",
	} {
		if !strings.Contains(all, w) {
			t.Errorf("timeline lacks %q:\n%s", w, all)
		}
	}
	for i := 1; i < len(entries); i++ {
		if entries[i].GetTime().AsTime().Before(entries[i-1].GetTime().AsTime()) {
			t.Errorf("entry %d is older than entry %d", i, i-1)
		}
	}
	// Paging and the task filter.
	var paged []string
	token = ""
	for {
		r, err := te.devices.GetDeviceTimeline(ctx, connect.NewRequest(&v1.GetDeviceTimelineRequest{DeviceId: "fw-2", TaskId: &id, PageSize: 3, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Msg.GetEntries()) > 3 {
			t.Fatalf("page of %d", len(r.Msg.GetEntries()))
		}
		for _, e := range r.Msg.GetEntries() {
			if e.GetTaskId() != id {
				t.Errorf("filtered entry of task %q", e.GetTaskId())
			}
			paged = append(paged, e.GetKind()+"|"+e.GetTaskId()+"|"+e.GetDetail())
		}
		if token = r.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	var ofTask []string
	for _, s := range text {
		if strings.Split(s, "|")[1] == id {
			ofTask = append(ofTask, s)
		}
	}
	if strings.Join(paged, "\n") != strings.Join(ofTask, "\n") || len(paged) < 5 {
		t.Errorf("paged timeline:\n%s\nwant:\n%s", strings.Join(paged, "\n"), strings.Join(ofTask, "\n"))
	}
	other := "ffffffffffffffffffffffff"
	if r, err := te.devices.GetDeviceTimeline(ctx, connect.NewRequest(&v1.GetDeviceTimelineRequest{DeviceId: "fw-2", TaskId: &other})); err != nil || len(r.Msg.GetEntries()) != 0 {
		t.Errorf("other task's timeline: %v %v", r, err)
	}
	_, err = te.devices.GetDeviceTimeline(ctx, connect.NewRequest(&v1.GetDeviceTimelineRequest{DeviceId: "ghost"}))
	wantCode(t, err, connect.CodeNotFound)

	// Retry the failed device: it downloads cleanly the second time.
	retried := te.clk.Now()
	if !retried.After(firstStart.AsTime()) {
		t.Fatalf("no protocol time passed since the first start (%v)", retried)
	}
	rr, err := te.tasks.RetryTask(ctx, connect.NewRequest(&v1.RetryTaskRequest{TaskId: id, DeviceIds: []string{"fw-2"}}))
	if err != nil {
		t.Fatal(err)
	}
	if taskDone(rr.Msg.GetTask().GetStatus()) {
		t.Fatalf("after retry %v", rr.Msg.GetTask())
	}
	final = te.runTask(t, id, 24*time.Hour)
	if final.GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS || final.GetProgress().GetSuccess() != 5 {
		t.Fatalf("after retry, final %v", final)
	}
	l, err := te.tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: id, PageToken: "2", PageSize: 1}))
	if err != nil || len(l.Msg.GetDevices()) != 1 || l.Msg.GetDevices()[0].GetAttempts() != 2 || l.Msg.GetDevices()[0].GetFailureReason() != "" {
		t.Fatalf("fw-2 after retry: %v %v", l, err)
	}
	// The second attempt's start replaced the first's: it started when the
	// retry was requested, and finished after that.
	d2 := l.Msg.GetDevices()[0]
	if st := d2.GetStartTime(); st == nil || !st.AsTime().Equal(retried) || !d2.GetUpdateTime().AsTime().After(st.AsTime()) {
		t.Errorf("fw-2 after retry: start_time %v, want %v (was %v), before update_time %v", st, retried, firstStart, d2.GetUpdateTime())
	}
	_, err = te.tasks.RetryTask(ctx, connect.NewRequest(&v1.RetryTaskRequest{TaskId: id}))
	wantCode(t, err, connect.CodeFailedPrecondition)
}

// TestStopTask stops a running task: it reports STOPPING or STOPPED, and
// ends STOPPED.
func TestStopTask(t *testing.T) {
	te := newTaskEnv(t, fwSpecs())
	f := te.fixture(t)
	ctx := context.Background()
	res, err := te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "stop_me", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg, GroupIds: []string{f.group},
		Policy: &v1.Policy{ScheduleTime: timestamppb.New(taskEpoch.Add(time.Hour))},
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetTask().GetTaskId()
	st, err := te.tasks.StopTask(ctx, connect.NewRequest(&v1.StopTaskRequest{TaskId: id}))
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Msg.GetTask().GetStatus(); s != v1.TaskStatus_TASK_STATUS_STOPPED || st.Msg.GetTask().GetProgress().GetStopped() != 2 {
		t.Fatalf("stopped %v", st.Msg.GetTask())
	}
	_, err = te.tasks.StopTask(ctx, connect.NewRequest(&v1.StopTaskRequest{TaskId: id}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	wantPlain(t, err, fmt.Sprintf("task %q is already stopped", id))

	// Watching a finished task sends its state and ends.
	stream, err := te.tasks.WatchTask(ctx, connect.NewRequest(&v1.WatchTaskRequest{TaskId: id}))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for stream.Receive() {
		n++
		if stream.Msg().GetTask().GetStatus() != v1.TaskStatus_TASK_STATUS_STOPPED {
			t.Errorf("watched %v", stream.Msg().GetTask())
		}
	}
	if stream.Err() != nil || n != 1 {
		t.Errorf("watch of a stopped task: %d messages, %v", n, stream.Err())
	}
	bad, err := te.tasks.WatchTask(ctx, connect.NewRequest(&v1.WatchTaskRequest{TaskId: "ffffffffffffffffffffffff"}))
	if err != nil {
		t.Fatal(err)
	}
	for bad.Receive() {
		t.Errorf("message for an unknown task")
	}
	wantCode(t, bad.Err(), connect.CodeNotFound)
}

func TestListTasksAndPackageInUse(t *testing.T) {
	te := newTaskEnv(t, fwSpecs())
	f := te.fixture(t)
	ctx := context.Background()
	create := func(name string, devs []string, pol *v1.Policy) string {
		t.Helper()
		res, err := te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
			Name: name, TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg, DeviceIds: devs, Policy: pol,
		}))
		if err != nil {
			t.Fatal(err)
		}
		te.clk.Advance(time.Second) // creation order is time order
		return res.Msg.GetTask().GetTaskId()
	}
	failing := create("failing", []string{"fw-2"}, nil)
	te.runTask(t, failing, 24*time.Hour)
	later := create("later", []string{"fw-0"}, &v1.Policy{ScheduleTime: timestamppb.New(te.clk.Now().Add(48 * time.Hour))})
	ok := create("ok", []string{"fw-1"}, nil)
	if got := te.runTask(t, ok, 24*time.Hour); got.GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS || got.GetFinishTime() == nil ||
		!got.GetFinishTime().AsTime().After(got.GetCreateTime().AsTime()) {
		t.Fatalf("ok task %v", got)
	}

	list := func(req *v1.ListTasksRequest) ([]string, string) {
		t.Helper()
		res, err := te.tasks.ListTasks(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, task := range res.Msg.GetTasks() {
			names = append(names, task.GetName()+":"+strings.TrimPrefix(task.GetStatus().String(), "TASK_STATUS_"))
		}
		return names, res.Msg.GetNextPageToken()
	}
	if got, next := list(&v1.ListTasksRequest{}); fmt.Sprint(got) != "[ok:SUCCESS later:WAITING failing:FAIL]" || next != "" {
		t.Fatalf("ListTasks = %v, %q", got, next)
	}
	var paged []string
	for tok := ""; ; {
		got, next := list(&v1.ListTasksRequest{PageSize: 1, PageToken: tok})
		paged = append(paged, got...)
		if next == "" {
			break
		}
		tok = next
	}
	if fmt.Sprint(paged) != "[ok:SUCCESS later:WAITING failing:FAIL]" {
		t.Fatalf("paged = %v", paged)
	}
	if got, _ := list(&v1.ListTasksRequest{Status: v1.TaskStatus_TASK_STATUS_FAIL.Enum()}); fmt.Sprint(got) != "[failing:FAIL]" {
		t.Fatalf("failed tasks = %v", got)
	}
	_, err := te.tasks.ListTasks(ctx, connect.NewRequest(&v1.ListTasksRequest{Status: v1.TaskStatus(42).Enum()}))
	wantCode(t, err, connect.CodeInvalidArgument)
	_, err = te.tasks.ListTasks(ctx, connect.NewRequest(&v1.ListTasksRequest{PageToken: "../x"}))
	wantCode(t, err, connect.CodeInvalidArgument)

	// The waiting task holds the package; once it stops, it can go.
	_, err = te.packages.DeletePackage(ctx, connect.NewRequest(&v1.DeletePackageRequest{PackageId: f.pkg}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	if err == nil || !strings.Contains(err.Error(), later) {
		t.Fatalf("DeletePackage error %v does not name task %s", err, later)
	}
	if _, err := te.tasks.StopTask(ctx, connect.NewRequest(&v1.StopTaskRequest{TaskId: later})); err != nil {
		t.Fatal(err)
	}
	te.eng.Settle()
	if _, err := te.packages.DeletePackage(ctx, connect.NewRequest(&v1.DeletePackageRequest{PackageId: f.pkg})); err != nil {
		t.Fatal(err)
	}
	// Retrying needs the package again.
	_, err = te.tasks.RetryTask(ctx, connect.NewRequest(&v1.RetryTaskRequest{TaskId: failing}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	if got := te.getTask(t, failing); got.GetStatus() != v1.TaskStatus_TASK_STATUS_FAIL {
		t.Fatalf("failing task after a refused retry: %v", got)
	}
}

// TestReflection lists the services over gRPC reflection (what grpcurl and
// buf curl do), with the token and without.
func TestReflection(t *testing.T) {
	te := newTaskEnv(t, nil)
	ctx := context.Background()
	list := func(token string) ([]string, error) {
		c := grpcreflect.NewClient(te.client(token), te.url, connect.WithGRPC())
		s := c.NewStream(ctx)
		defer s.Close()
		names, err := s.ListServices()
		var out []string
		for _, n := range names {
			out = append(out, string(n))
		}
		slices.Sort(out)
		return out, err
	}
	got, err := list(testToken)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"grpc.health.v1.Health", "otafleet.v1.ClusterService", "otafleet.v1.DeviceService", "otafleet.v1.GroupService", "otafleet.v1.PackageService", "otafleet.v1.ProductService", "otafleet.v1.TaskService"}
	if !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}
	c := grpcreflect.NewClient(te.client(testToken), te.url, connect.WithGRPC())
	s := c.NewStream(ctx)
	defer s.Close()
	files, err := s.FileContainingSymbol("otafleet.v1.TaskService")
	if err != nil || len(files) == 0 {
		t.Fatalf("FileContainingSymbol: %v, %d files", err, len(files))
	}
	_, err = list("wrong")
	wantCode(t, err, connect.CodeUnauthenticated)
}

// TestCreateTaskRefusesUnrunnablePackage (issue 20 item 8): a PCP package
// needs more segments than PCP counts (65,535 of 500 bytes, about 32 MB):
// the device machine would reject every sub-task, so the task is refused
// at creation with invalid_argument naming package_id. One segment less is
// a task like any other.
func TestCreateTaskRefusesUnrunnablePackage(t *testing.T) {
	te := newTaskEnv(t, nil)
	ctx := context.Background()
	prod := te.mustProduct(t, v1.Protocol_PROTOCOL_LWM2M, true)
	if _, err := te.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: prod, Devices: newDevices("sw-", 1)})); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id   string
		size int64
		ok   bool
	}{
		{"big", messages.PcpDefaultSegmentSize*messages.PcpMaxSegments + 1, false},
		{"fits", messages.PcpDefaultSegmentSize * messages.PcpMaxSegments, true},
	} {
		// The registry entry alone: the task is refused before any byte is read.
		if err := te.store.PutPackage(ctx, persistence.Package{
			ID: c.id, ProductID: prod, Type: persistence.PackageSoftware, Version: "2.0", FileName: "sw.bin", Size: c.size, Created: taskEpoch,
		}); err != nil {
			t.Fatal(err)
		}
		_, err := te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
			Name: "sw_" + c.id, TaskType: v1.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, PackageId: c.id, DeviceIds: []string{"sw-0"},
		}))
		switch {
		case c.ok && err != nil:
			t.Errorf("%s: %v", c.id, err)
		case !c.ok && (connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "package_id: the package needs 65536 PCP segments")):
			t.Errorf("%s: got %v, want invalid_argument naming package_id and the segment count", c.id, err)
		}
	}
}
