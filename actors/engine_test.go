package actors_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
)

var epoch = time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC)

// rig is an engine over a store, scripted devices and the fake clock, with
// the cell budget invariant checked at every cell step and its metrics in a
// registry of its own.
type rig struct {
	t     *testing.T
	clk   *clocktest.Clock
	store persistence.EventStore
	tr    *memtransport.Transport
	e     *actors.Engine
	reg   *prometheus.Registry

	mu         sync.Mutex
	peak       map[string]uint32
	used       map[string]uint32 // each cell's units after its last step
	violations []string
}

func newRig(t *testing.T, clk *clocktest.Clock, store persistence.EventStore, tr *memtransport.Transport, up *transport.LateUplinks) *rig {
	t.Helper()
	return newRigConfig(t, actors.Config{PassivateAfter: 10 * time.Minute}, clk, store, tr, up)
}

// newRigConfig is newRig with an engine configuration; the invariant is
// checked against its cell budget.
func newRigConfig(t *testing.T, cfg actors.Config, clk *clocktest.Clock, store persistence.EventStore, tr *memtransport.Transport, up *transport.LateUplinks) *rig {
	t.Helper()
	r := &rig{t: t, clk: clk, store: store, tr: tr, reg: prometheus.NewRegistry(), peak: map[string]uint32{}, used: map[string]uint32{}}
	cellCfg := cfg.Default().Cell
	e, err := actors.New(cfg, actors.Deps{
		Store: store, Clock: clk, Transport: tr, Metrics: r.reg,
		CellStepped: func(id string, s cellfsm.State) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if err := s.Check(cellCfg); err != nil || s.Used() > cellCfg.Budget {
				r.violations = append(r.violations, fmt.Sprintf("%s: used %d: %v", id, s.Used(), err))
			}
			r.peak[id] = max(r.peak[id], s.Used())
			r.used[id] = s.Used()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.e = e
	up.Set(e)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

// fleet builds n scripted FOTA devices spread over cells with mixed coverage:
// 70% good, 20% medium, 5% poor, 5% without SINR (cell-ID-only budget).
func fleet(n, cells int, protocol messages.Protocol) []memtransport.DeviceSpec {
	i32 := func(v int32) *int32 { return &v }
	specs := make([]memtransport.DeviceSpec, n)
	for i := range specs {
		s := memtransport.DeviceSpec{
			ID: fmt.Sprintf("dev-%04d", i), Protocol: protocol, FwVersion: "1.0", SwVersion: "1.0",
			CellID: fmt.Sprintf("cell-%02d", i%cells),
		}
		switch q := (i / cells) % 20; {
		case q < 14:
			s.RSRP, s.SINR = i32(-90), i32(12)
		case q < 18:
			s.RSRP, s.SINR = i32(-110), i32(2)
		case q < 19:
			s.RSRP, s.SINR = i32(-121), i32(-5)
		default:
			s.RSRP = i32(-95)
		}
		specs[i] = s
	}
	return specs
}

func newFleetRig(t *testing.T, specs []memtransport.DeviceSpec) *rig {
	t.Helper()
	return newFleetRigOn(t, specs, memstore.New())
}

// newFleetRigOn is newFleetRig on store.
func newFleetRigOn(t *testing.T, specs []memtransport.DeviceSpec, store persistence.EventStore) *rig {
	t.Helper()
	clk := clocktest.New(epoch)
	tr, up := newFleetTransport(t, clk, specs)
	r := newRig(t, clk, store, tr, up)
	t.Cleanup(r.e.Stop)
	if err := tr.ConnectAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.e.Settle()
	return r
}

// newFleetTransport is an in-memory transport on clk holding the devices of
// specs, not yet connected, and the uplinks an engine on it is bound to.
func newFleetTransport(t testing.TB, clk *clocktest.Clock, specs []memtransport.DeviceSpec) (*memtransport.Transport, *transport.LateUplinks) {
	t.Helper()
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
	return tr, up
}

// runUntil advances the fake clock from timer to timer, letting the actors
// settle after each, until done holds or limit of protocol time has passed.
func (r *rig) runUntil(done func() bool, limit time.Duration) {
	r.t.Helper()
	end := r.clk.Now().Add(limit)
	r.e.Settle() // what was just sent (a reconnect, a command) may still be in flight
	for !done() {
		next, ok := r.clk.NextDeadline()
		if !ok || next.After(end) {
			r.t.Fatalf("not done after %v of protocol time (next timer %v, ok %v)", limit, next, ok)
		}
		r.clk.AdvanceTo(next)
		r.e.Settle()
	}
}

func (r *rig) task(id string) actors.TaskView {
	r.t.Helper()
	v, err := r.e.Task(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	return v
}

func (r *rig) finished(id string) func() bool {
	return func() bool { return r.task(id).Status.Final() }
}

func createTask(id string, protocol messages.Protocol, devices []string, policy *messages.Policy) *messages.CreateTask {
	tt := messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE
	if protocol == messages.Protocol_PROTOCOL_LWM2M_PCP {
		tt = messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE
	}
	return &messages.CreateTask{
		TaskId: id, Name: id, TaskType: tt, Protocol: protocol, DeviceIds: devices, Policy: policy,
		Package: &messages.Package{PackageId: "pkg-" + id, Version: "2.0", Size: 4000, SegmentSize: 500, CheckCode: 1},
	}
}

func ids(specs []memtransport.DeviceSpec) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.ID
	}
	return out
}

// TestEngineCampaign1000: one FOTA task over 1,000 scripted devices in 20
// cells with mixed coverage; every 50th device fails its first download and
// is retried. The task succeeds with exact counters, every device executed
// exactly once, and no cell ever exceeded its budget. On memstore and
// PostgreSQL (Pebble's engine runs in the crash tests; this campaign's
// 1,000 devices on it would only add to the package's run).
func TestEngineCampaign1000(t *testing.T) {
	forEachStore(t, engineCampaign1000, "memstore", "postgres")
}

func engineCampaign1000(t *testing.T, s engineStore) {
	specs := fleet(1000, 20, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	for i := range specs {
		if i%50 == 0 {
			specs[i].Behaviour.FailDownloads = 1
		}
	}
	store, _ := s.openFresh(t)
	r := newFleetRigOn(t, specs, store)
	ctx := context.Background()
	if err := r.e.CreateTask(ctx, createTask("campaign", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5})); err != nil {
		t.Fatal(err)
	}
	r.runUntil(r.finished("campaign"), 24*time.Hour)
	v := r.task("campaign")
	want := taskfsm.Progress{Total: 1000, Success: 1000}
	if v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress != want {
		t.Fatalf("task: %v %+v", v.Status, v.Progress)
	}
	for _, s := range specs {
		d, _ := r.tr.Device(s.ID)
		if d.Counters.Executes != 1 || d.FwVersion != "2.0" {
			t.Errorf("%s: %d executes, version %q", s.ID, d.Counters.Executes, d.FwVersion)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.violations) > 0 {
		t.Fatalf("cell budget broken %d times, first: %s", len(r.violations), r.violations[0])
	}
	var most uint32
	for _, p := range r.peak {
		most = max(most, p)
	}
	if most < 25 {
		t.Errorf("peak units in a cell %d: the budget was never used", most)
	}
	for id := range r.peak {
		c, err := r.e.Cell(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if c.Used() != 0 || c.Waiting() != 0 {
			t.Errorf("%s keeps %d units, %d waiting after the campaign", id, c.Used(), c.Waiting())
		}
	}
	t.Logf("peak units per cell: %v; protocol time %v", r.peak, r.clk.Now().Sub(epoch))
}

// TestEngineTaskConflict: a second task reaching a device that runs the first
// task's job gets "Task Conflict" for it (spec 6.2); the first task is unaffected.
func TestEngineTaskConflict(t *testing.T) {
	specs := fleet(3, 1, messages.Protocol_PROTOCOL_MQTT)
	r := newFleetRig(t, specs)
	ctx := context.Background()
	if err := r.e.CreateTask(ctx, createTask("first", messages.Protocol_PROTOCOL_MQTT, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	r.e.Settle()
	if err := r.e.CreateTask(ctx, createTask("second", messages.Protocol_PROTOCOL_MQTT, ids(specs)[:1], nil)); err != nil {
		t.Fatal(err)
	}
	r.runUntil(func() bool { return r.finished("first")() && r.finished("second")() }, 24*time.Hour)
	if v := r.task("first"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
		t.Errorf("first: %v %+v", v.Status, v.Progress)
	}
	v, err := r.e.TaskDevices(ctx, "second", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != messages.TaskStatus_TASK_STATUS_FAIL || len(v.Subtasks) != 1 || v.Subtasks[0].Reason != messages.Reason_REASON_TASK_CONFLICT {
		t.Fatalf("second: %v %+v", v.Status, v.Subtasks)
	}
}

// TestEngineUnrunnableJobEnds (issue 20 item 8): a PCP package over 65,535
// segments reaches the devices (a task created past the API's check): each
// device rejects the job with its outcome, so the task ends FAIL instead of
// keeping its sub-tasks PROCESSING forever.
func TestEngineUnrunnableJobEnds(t *testing.T) {
	specs := fleet(2, 1, messages.Protocol_PROTOCOL_LWM2M_PCP)
	r := newFleetRig(t, specs)
	ctx := context.Background()
	c := createTask("huge", messages.Protocol_PROTOCOL_LWM2M_PCP, ids(specs), nil)
	c.Package.Size = int64(c.Package.GetSegmentSize())*messages.PcpMaxSegments + 1
	if err := r.e.CreateTask(ctx, c); err != nil {
		t.Fatal(err)
	}
	r.runUntil(r.finished("huge"), time.Hour)
	v, err := r.e.TaskDevices(ctx, "huge", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != messages.TaskStatus_TASK_STATUS_FAIL || len(v.Subtasks) != 2 {
		t.Fatalf("task %v, %d sub-tasks", v.Status, len(v.Subtasks))
	}
	for _, st := range v.Subtasks {
		if st.Reason != messages.Reason_REASON_INVALID_JOB || !strings.Contains(st.Detail, "65536 PCP segments") {
			t.Errorf("sub-task %+v", st)
		}
	}
}

// TestEngineBrokenDeviceEndsJob (issue 20 item 8): a device actor that
// cannot recover its journal refuses every input; the StartJob it refuses
// still ends its sub-task, with the refusal as detail, while the other
// device upgrades.
func TestEngineBrokenDeviceEndsJob(t *testing.T) {
	specs := fleet(2, 1, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	ctx := context.Background()
	store := memstore.New()
	// A journal entry of a cell's type in the first device's stream.
	if _, err := store.Append(ctx, persistence.Append{
		Stream: persistence.Stream{Kind: persistence.KindDevice, ID: specs[0].ID},
		Events: []persistence.Event{{Type: persistence.EventTypeCell, Version: 1, At: 1, Payload: []byte{}}},
	}); err != nil {
		t.Fatal(err)
	}
	r := newFleetRigOn(t, specs, store)
	if err := r.e.CreateTask(ctx, createTask("t", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	r.runUntil(r.finished("t"), time.Hour)
	v, err := r.e.TaskDevices(ctx, "t", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != messages.TaskStatus_TASK_STATUS_PARTIAL_SUCCESS || len(v.Subtasks) != 2 {
		t.Fatalf("task %v, sub-tasks %+v", v.Status, v.Subtasks)
	}
	if st := v.Subtasks[0]; st.Status != messages.SubtaskStatus_SUBTASK_STATUS_FAIL || st.Reason != messages.Reason_REASON_INVALID_JOB || !strings.Contains(st.Detail, "recovering") {
		t.Errorf("the broken device's sub-task: %+v", st)
	}
}

// TestEngineStop: stopping a task with devices in flight ends it STOPPED;
// waiting devices stop at once, running ones when their device acknowledges.
func TestEngineStop(t *testing.T) {
	specs := fleet(40, 2, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	for i := range specs {
		specs[i].Behaviour.IgnoreUpgrade = i%2 == 0 // these would wait for T5
	}
	r := newFleetRig(t, specs)
	ctx := context.Background()
	if err := r.e.CreateTask(ctx, createTask("stop-me", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	r.runUntil(func() bool { return r.task("stop-me").Progress.Success > 0 }, time.Hour)
	if err := r.e.StopTask(ctx, "stop-me"); err != nil {
		t.Fatal(err)
	}
	r.runUntil(r.finished("stop-me"), time.Hour)
	v := r.task("stop-me")
	if v.Status != messages.TaskStatus_TASK_STATUS_STOPPED || v.Progress.Stopped == 0 || v.Progress.Success+v.Progress.Stopped+v.Progress.Fail != 40 {
		t.Fatalf("after stop: %v %+v", v.Status, v.Progress)
	}
	if err := r.e.StopTask(ctx, "stop-me"); !errors.Is(err, taskfsm.ErrInvalidTransition) {
		t.Fatalf("stopping a stopped task: %v", err)
	}
}

// TestEngineRetry: devices that fail (no automatic retry) make the task
// PARTIAL_SUCCESS; RetryTask re-runs them and the task succeeds.
func TestEngineRetry(t *testing.T) {
	specs := fleet(30, 3, messages.Protocol_PROTOCOL_LWM2M_PCP)
	for i := range specs {
		if i%3 == 0 {
			specs[i].Behaviour.FailDownloads = 1
		}
	}
	r := newFleetRig(t, specs)
	ctx := context.Background()
	if err := r.e.CreateTask(ctx, createTask("retry-me", messages.Protocol_PROTOCOL_LWM2M_PCP, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	r.runUntil(r.finished("retry-me"), 24*time.Hour)
	if v := r.task("retry-me"); v.Status != messages.TaskStatus_TASK_STATUS_PARTIAL_SUCCESS || v.Progress.Fail != 10 {
		t.Fatalf("first round: %v %+v", v.Status, v.Progress)
	}
	if err := r.e.RetryTask(ctx, "retry-me", nil); err != nil {
		t.Fatal(err)
	}
	r.runUntil(r.finished("retry-me"), 24*time.Hour)
	if v := r.task("retry-me"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress.Success != 30 {
		t.Fatalf("after retry: %v %+v", v.Status, v.Progress)
	}
}

// TestEngineRecovery: the engine "crashes" (is dropped without any shutdown
// work) halfway through a mixed campaign; a new engine over the same journal
// and devices finishes it, and no device got a second Execute or upgrade
// event. On every store, reopened as a restarted process opens it.
func TestEngineRecovery(t *testing.T) {
	forEachStore(t, engineRecovery)
}

func engineRecovery(t *testing.T, s engineStore) {
	clk := clocktest.New(epoch)
	up := &transport.LateUplinks{}
	tr, err := memtransport.New(memtransport.Config{}, clk, up, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	var all []string
	for _, p := range []messages.Protocol{messages.Protocol_PROTOCOL_MQTT, messages.Protocol_PROTOCOL_LWM2M_FOTA, messages.Protocol_PROTOCOL_LWM2M_PCP} {
		specs := fleet(60, 4, p)
		for i := range specs {
			specs[i].ID = fmt.Sprintf("%s-%d", p, i)
			if err := tr.Add(specs[i]); err != nil {
				t.Fatal(err)
			}
			all = append(all, specs[i].ID)
		}
	}
	store, restart := s.openFresh(t)
	r := newRig(t, clk, store, tr, up)
	ctx := context.Background()
	if err := tr.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	for i, p := range []messages.Protocol{messages.Protocol_PROTOCOL_MQTT, messages.Protocol_PROTOCOL_LWM2M_FOTA, messages.Protocol_PROTOCOL_LWM2M_PCP} {
		if err := r.e.CreateTask(ctx, createTask(fmt.Sprintf("t%d", i), p, all[i*60:(i+1)*60], nil)); err != nil {
			t.Fatal(err)
		}
	}
	r.runUntil(func() bool { return r.task("t1").Progress.Success >= 20 }, 24*time.Hour)
	r.e.Stop() // the crash: whatever was not journaled is gone
	up.Set(nil)

	r2 := newRig(t, clk, restart(store), tr, up) // recovery
	t.Cleanup(r2.e.Stop)
	for i := range 3 {
		r2.runUntil(r2.finished(fmt.Sprintf("t%d", i)), 48*time.Hour)
		if v := r2.task(fmt.Sprintf("t%d", i)); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress.Success != 60 {
			t.Errorf("t%d after recovery: %v %+v", i, v.Status, v.Progress)
		}
	}
	for _, id := range all {
		d, _ := tr.Device(id)
		c := d.Counters
		if c.Executes > 1 || c.PCPExecutes > 1 || c.Upgrades != 1 {
			t.Errorf("%s: executes %d, PCP executes %d, upgrades %d", id, c.Executes, c.PCPExecutes, c.Upgrades)
		}
	}
}

// TestRecoveryNeverRepeatsExecute stops the engine right after it journaled a
// FOTA or PCP device's DOWNLOADED stage and sent its Execute (or 0x17), or an
// MQTT device's DOWNLOADING stage (it has its upgrade event), then recovers
// while the devices reconnect: no device gets a second Execute, 0x17 or
// upgrade event, and the job still succeeds. On every store, reopened as a
// restarted process opens it.
func TestRecoveryNeverRepeatsExecute(t *testing.T) {
	forEachStore(t, recoveryNeverRepeatsExecute)
}

func recoveryNeverRepeatsExecute(t *testing.T, s engineStore) {
	for _, p := range []messages.Protocol{messages.Protocol_PROTOCOL_LWM2M_FOTA, messages.Protocol_PROTOCOL_LWM2M_PCP, messages.Protocol_PROTOCOL_MQTT} {
		t.Run(p.String(), func(t *testing.T) {
			clk := clocktest.New(epoch)
			up := &transport.LateUplinks{}
			tr, err := memtransport.New(memtransport.Config{}, clk, up, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			specs := fleet(1, 1, p)
			if err := tr.Add(specs[0]); err != nil {
				t.Fatal(err)
			}
			store, restart := s.openFresh(t)
			r := newRig(t, clk, store, tr, up)
			ctx := context.Background()
			if err := tr.ConnectAll(ctx); err != nil {
				t.Fatal(err)
			}
			if err := r.e.CreateTask(ctx, createTask("t", p, ids(specs), nil)); err != nil {
				t.Fatal(err)
			}
			id := specs[0].ID
			stage := messages.Stage_STAGE_DOWNLOADED
			if p == messages.Protocol_PROTOCOL_MQTT {
				stage = messages.Stage_STAGE_DOWNLOADING
			}
			r.runUntil(func() bool {
				v, err := r.e.Device(ctx, id)
				return err == nil && v.State.Stage == stage
			}, time.Hour)
			r.e.Stop()
			up.Set(nil)
			// The server is down long enough for the devices to finish what they
			// were told (Execute, download, install); their reports are lost.
			clk.Advance(10 * time.Second)

			r2 := newRig(t, clk, restart(store), tr, up)
			defer r2.e.Stop()
			if err := tr.ConnectAll(ctx); err != nil { // devices reconnect to the restarted server
				t.Fatal(err)
			}
			r2.runUntil(r2.finished("t"), 2*time.Hour)
			if v := r2.task("t"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
				t.Fatalf("task: %v %+v", v.Status, v.Progress)
			}
			d, _ := tr.Device(id)
			c := d.Counters
			if c.Executes+c.PCPExecutes+c.UpgradeEvents != 1 || c.Upgrades != 1 {
				t.Fatalf("%s: %d Executes, %d PCP 0x17, %d upgrade events, %d upgrades; want exactly one", id, c.Executes, c.PCPExecutes, c.UpgradeEvents, c.Upgrades)
			}
		})
	}
}
