// Package actors_test wires the three pure state machines together with a
// deterministic in-memory message loop and scripted devices, to check that
// their vocabularies fit before the actor engine exists: every effect of one
// machine is an input another one understands.
package actors_test

import (
	"container/heap"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	// Registers -rewrite, so that "go test ./actors/... -rewrite" works here too.
	_ "github.com/otafleet/otafleet/internal/goldentest"
	"github.com/otafleet/otafleet/messages"
)

// event is one scheduled delivery on the simulated timeline.
type event struct {
	at  time.Time
	seq int
	fn  func()
}

type queue []event

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *queue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// simDevice is a scripted device: it answers the real downlinks of its protocol.
type simDevice struct {
	id        string
	s         devicefsm.State
	cell      string
	rsrp      *int32
	sinr      *int32
	version   string
	failFirst bool // the first download fails (integrity check)
	downloads int
	pkg       *messages.Package
	nextSeg   uint32
}

type world struct {
	t       *testing.T
	now     time.Time
	q       queue
	seq     int
	devCfg  devicefsm.Config
	cellCfg cellfsm.Config
	taskCfg taskfsm.Config
	devices map[string]*simDevice
	cells   map[string]cellfsm.State
	tasks   map[string]taskfsm.State
	// observations
	peakHolders     map[string]int
	poorWithCompany int
	revoked         int
}

const latency = 20 * time.Millisecond

func (w *world) at(d time.Duration, fn func()) {
	w.seq++
	heap.Push(&w.q, event{at: w.now.Add(d), seq: w.seq, fn: fn})
}

func (w *world) atTime(t time.Time, fn func()) {
	w.seq++
	heap.Push(&w.q, event{at: t, seq: w.seq, fn: fn})
}

func (w *world) run(until time.Time) {
	for w.q.Len() > 0 {
		e := heap.Pop(&w.q).(event)
		if e.at.After(until) {
			heap.Push(&w.q, e)
			return
		}
		w.now = e.at
		e.fn()
	}
}

func ns(t time.Time) int64 { return messages.UnixNano(t) }

// ---- device actor shell ----

func (w *world) toDevice(id string, in *messages.DeviceInput) {
	d := w.devices[id]
	in.AtUnixNano = ns(w.now)
	next, res, err := devicefsm.Step(w.devCfg, d.s, in)
	if err != nil {
		w.t.Fatalf("device %s: %v", id, err)
	}
	d.s = next
	for _, e := range res.Effects {
		switch k := e.Kind.(type) {
		case *messages.DeviceEffect_Downlink:
			w.deviceBehaviour(d, k.Downlink)
		case *messages.DeviceEffect_ArmDeadline:
			a := k.ArmDeadline
			w.atTime(messages.Time(a.GetAtUnixNano()), func() {
				w.toDevice(id, &messages.DeviceInput{Kind: &messages.DeviceInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: a.GetStep(), Generation: a.GetGeneration()}}})
			})
		case *messages.DeviceEffect_RequestPermit:
			r := k.RequestPermit
			w.at(latency, func() {
				w.toCell(r.GetCellId(), &messages.CellInput{Kind: &messages.CellInput_RequestPermit{RequestPermit: r}})
			})
		case *messages.DeviceEffect_ReleasePermit:
			r := k.ReleasePermit
			w.at(latency, func() {
				w.toCell(r.GetCellId(), &messages.CellInput{Kind: &messages.CellInput_ReleasePermit{ReleasePermit: r}})
			})
		case *messages.DeviceEffect_ReportOutcome:
			o := k.ReportOutcome
			w.at(latency, func() { w.toTask(o.GetTaskId(), &messages.TaskInput{Kind: &messages.TaskInput_Outcome{Outcome: o}}) })
		case *messages.DeviceEffect_RevokeToken:
			w.revoked++
		default:
			w.t.Fatalf("device %s: unhandled effect %T", id, k)
		}
	}
}

// deviceBehaviour is the scripted device answering one downlink.
func (w *world) deviceBehaviour(d *simDevice, dl *messages.Downlink) {
	send := func(after time.Duration, in *messages.DeviceInput) {
		w.at(latency+after, func() { w.toDevice(d.id, in) })
	}
	up := func(k any) *messages.DeviceInput {
		in := &messages.DeviceInput{}
		switch v := k.(type) {
		case *messages.VersionReported:
			in.Kind = &messages.DeviceInput_VersionReported{VersionReported: v}
		case *messages.RadioReported:
			in.Kind = &messages.DeviceInput_RadioReported{RadioReported: v}
		case *messages.Lwm2MResponse:
			in.Kind = &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: v}
		case *messages.FotaStatus:
			in.Kind = &messages.DeviceInput_FotaStatus{FotaStatus: v}
		case *messages.MqttProgress:
			in.Kind = &messages.DeviceInput_MqttProgress{MqttProgress: v}
		case *messages.PcpVersion:
			in.Kind = &messages.DeviceInput_PcpVersion{PcpVersion: v}
		case *messages.PcpSegmentRequest:
			in.Kind = &messages.DeviceInput_PcpSegmentRequest{PcpSegmentRequest: v}
		case *messages.PcpDownloadResult:
			in.Kind = &messages.DeviceInput_PcpDownloadResult{PcpDownloadResult: v}
		case *messages.PcpExecuteResponse:
			in.Kind = &messages.DeviceInput_PcpExecuteResponse{PcpExecuteResponse: v}
		case *messages.PcpUpgradeResult:
			in.Kind = &messages.DeviceInput_PcpUpgradeResult{PcpUpgradeResult: v}
		default:
			w.t.Fatalf("no uplink for %T", k)
		}
		return in
	}
	i32 := func(v int32) *int32 { return &v }
	fail := func() bool { d.downloads++; return d.failFirst && d.downloads == 1 }
	switch k := dl.Kind.(type) {
	case *messages.Downlink_MqttVersionQuery:
		v := d.version
		send(time.Second, up(&messages.VersionReported{FwVersion: &v}))
	case *messages.Downlink_MqttUpgrade:
		target := k.MqttUpgrade.GetJob().GetPackage().GetVersion()
		send(30*time.Second, up(&messages.MqttProgress{Progress: i32(50), Version: d.version}))
		if fail() {
			send(60*time.Second, up(&messages.MqttProgress{ResultCode: 7, Description: "sha256 mismatch"}))
			return
		}
		w.at(latency+60*time.Second, func() {
			d.version = target
			w.toDevice(d.id, up(&messages.MqttProgress{Progress: i32(100), Version: target}))
		})
	case *messages.Downlink_Lwm2MRead:
		switch k.Lwm2MRead.GetPath() {
		case messages.PathFirmwareVersion:
			v := d.version
			send(time.Second, up(&messages.VersionReported{FwVersion: &v}))
		case messages.PathConnMon:
			send(time.Second, up(&messages.RadioReported{Rsrp: d.rsrp, Sinr: d.sinr, CellId: d.cell}))
		case messages.PathCellID:
			send(time.Second, up(&messages.RadioReported{CellId: d.cell}))
		case messages.PathUpdateResult:
		default:
			w.t.Fatalf("unexpected read %s", k.Lwm2MRead.GetPath())
		}
	case *messages.Downlink_Lwm2MObserve, *messages.Downlink_Lwm2MCancelObserve, *messages.Downlink_Lwm2MWrite:
	case *messages.Downlink_Lwm2MWritePackageUri:
		target := k.Lwm2MWritePackageUri.GetJob().GetPackage().GetVersion()
		send(0, up(&messages.Lwm2MResponse{Op: messages.Lwm2MOp_LWM2M_OP_WRITE, Path: messages.PathPackageURI, Success: true, Code: "2.04"}))
		send(time.Second, up(&messages.FotaStatus{State: i32(1)}))
		if fail() {
			send(20*time.Second, up(&messages.FotaStatus{State: i32(0), UpdateResult: i32(5)}))
			return
		}
		send(40*time.Second, up(&messages.FotaStatus{State: i32(2)}))
		d.pkg = &messages.Package{Version: target}
	case *messages.Downlink_Lwm2MExecute:
		send(time.Second, up(&messages.FotaStatus{State: i32(3)}))
		w.at(latency+30*time.Second, func() {
			d.version = d.pkg.GetVersion()
			w.toDevice(d.id, up(&messages.FotaStatus{State: i32(0), UpdateResult: i32(1)}))
		})
	case *messages.Downlink_PcpQueryVersion:
		send(time.Second, up(&messages.PcpVersion{Version: d.version}))
	case *messages.Downlink_PcpNotifyNewVersion:
		n := k.PcpNotifyNewVersion
		d.pkg = &messages.Package{Version: n.GetVersion(), Size: int64(n.GetSegmentCount())}
		d.nextSeg = 0
		send(time.Second, up(&messages.PcpSegmentRequest{Version: n.GetVersion(), SegmentNo: 0}))
	case *messages.Downlink_PcpSegmentResponse:
		r := k.PcpSegmentResponse
		if r.GetResult() != 0 {
			w.t.Fatalf("device %s: segment %d refused with %#x", d.id, r.GetSegmentNo(), r.GetResult())
		}
		d.nextSeg = r.GetSegmentNo() + 1
		if int64(d.nextSeg) < d.pkg.GetSize() {
			send(100*time.Millisecond, up(&messages.PcpSegmentRequest{Version: d.pkg.GetVersion(), SegmentNo: d.nextSeg}))
			return
		}
		status := uint32(0)
		if fail() {
			status = 7
		}
		send(time.Second, up(&messages.PcpDownloadResult{Status: status}))
	case *messages.Downlink_PcpDownloadResultAck, *messages.Downlink_PcpUpgradeResultAck:
	case *messages.Downlink_PcpExecute:
		send(time.Second, up(&messages.PcpExecuteResponse{}))
		w.at(latency+30*time.Second, func() {
			d.version = d.pkg.GetVersion()
			w.toDevice(d.id, up(&messages.PcpUpgradeResult{Version: d.version}))
		})
	default:
		w.t.Fatalf("device %s: unhandled downlink %T", d.id, k)
	}
}

// ---- cell actor shell ----

func (w *world) toCell(id string, in *messages.CellInput) {
	s, ok := w.cells[id]
	if !ok {
		s = cellfsm.New(id)
	}
	in.AtUnixNano = ns(w.now)
	next, res, err := cellfsm.Step(w.cellCfg, s, in)
	if err != nil {
		w.t.Fatalf("cell %s: %v", id, err)
	}
	if err := next.Check(w.cellCfg); err != nil {
		w.t.Fatalf("cell %s at %v: %v", id, w.now, err)
	}
	w.cells[id] = next
	if h := next.Holders(); h > w.peakHolders[id] {
		w.peakHolders[id] = h
	}
	for _, slot := range next.Slots {
		if slot.Level == messages.CoverageLevel_COVERAGE_LEVEL_POOR && next.Holders() > 1 {
			w.poorWithCompany++
		}
	}
	for _, e := range res.Effects {
		g := e.GetGrant()
		w.at(latency, func() {
			w.toDevice(g.GetDeviceId(), &messages.DeviceInput{Kind: &messages.DeviceInput_PermitGranted{PermitGranted: g}})
		})
	}
}

// ---- task actor shell ----

func (w *world) toTask(id string, in *messages.TaskInput) {
	in.AtUnixNano = ns(w.now)
	next, res, err := taskfsm.Step(w.taskCfg, w.tasks[id], in)
	if err != nil {
		w.t.Fatalf("task %s: %v", id, err)
	}
	w.tasks[id] = next
	for _, e := range res.Effects {
		switch k := e.Kind.(type) {
		case *messages.TaskEffect_StartJob:
			sj := k.StartJob
			w.at(latency, func() {
				w.toDevice(sj.GetDeviceId(), &messages.DeviceInput{Kind: &messages.DeviceInput_StartJob{StartJob: sj}})
			})
		case *messages.TaskEffect_StopJob:
			sj := k.StopJob
			w.at(latency, func() {
				w.toDevice(sj.GetDeviceId(), &messages.DeviceInput{Kind: &messages.DeviceInput_StopJob{StopJob: sj}})
			})
		case *messages.TaskEffect_ArmDeadline:
			a := k.ArmDeadline
			w.atTime(messages.Time(a.GetAtUnixNano()), func() {
				w.toTask(id, &messages.TaskInput{Kind: &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: a.GetStep(), Generation: a.GetGeneration()}}})
			})
		}
	}
}

// TestCampaignAcrossMachines runs three tasks (MQTT firmware, LwM2M FOTA,
// LwM2M PCP software) over 600 devices in 6 shared cells with mixed coverage,
// plus a fourth task that collides with the FOTA one. Some devices fail their
// first download and are retried. Every cell step checks the budget
// invariant; at the end every sub-task is in a final state with the right
// counters.
func TestCampaignAcrossMachines(t *testing.T) {
	start := time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)
	w := &world{
		t: t, now: start,
		devCfg: devicefsm.DefaultConfig(), cellCfg: cellfsm.DefaultConfig(), taskCfg: taskfsm.DefaultConfig(),
		devices: map[string]*simDevice{}, cells: map[string]cellfsm.State{}, tasks: map[string]taskfsm.State{},
		peakHolders: map[string]int{},
	}
	i32 := func(v int32) *int32 { return &v }
	groups := map[messages.Protocol][]string{}
	protocols := []messages.Protocol{messages.Protocol_PROTOCOL_MQTT, messages.Protocol_PROTOCOL_LWM2M_FOTA, messages.Protocol_PROTOCOL_LWM2M_PCP}
	for i := 0; i < 600; i++ {
		p := protocols[i%3]
		d := &simDevice{id: fmt.Sprintf("dev-%d", i), cell: fmt.Sprintf("cell-%d", (i/3)%6), version: "1.0", failFirst: i%17 == 0}
		d.s = devicefsm.New(d.id)
		switch r := (i / 3) % 20; {
		case r < 14: // good
			d.rsrp, d.sinr = i32(-90), i32(12)
		case r < 18: // medium
			d.rsrp, d.sinr = i32(-110), i32(2)
		case r < 19: // poor
			d.rsrp, d.sinr = i32(-120), i32(-5)
		default: // no SINR: cell-ID-only budget
			d.rsrp = i32(-95)
		}
		w.devices[d.id] = d
		groups[p] = append(groups[p], d.id)
		queue := i%5 == 0
		w.at(time.Duration(i)*time.Millisecond, func() {
			w.toDevice(d.id, &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{QueueMode: queue && p != messages.Protocol_PROTOCOL_MQTT}}})
		})
	}
	policy := &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5}
	create := func(id string, p messages.Protocol, tt messages.TaskType, version string, devs []string) {
		w.at(time.Second, func() {
			w.toTask(id, &messages.TaskInput{Kind: &messages.TaskInput_Create{Create: &messages.CreateTask{
				TaskId: id, Name: id, TaskType: tt, Protocol: p, DeviceIds: devs, Policy: policy,
				Package: &messages.Package{PackageId: "pkg-" + id, Version: version, Size: 2000, SegmentSize: 500},
			}}})
		})
	}
	fw, sw := messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE
	create("mqtt", protocols[0], fw, "2.0", groups[protocols[0]])
	create("fota", protocols[1], fw, "2.0", groups[protocols[1]])
	create("pcp", protocols[2], sw, "2.0", groups[protocols[2]])
	w.run(start.Add(1500 * time.Millisecond))
	// The fourth task reaches ten FOTA devices while the first one holds them.
	create("late", protocols[1], fw, "3.0", groups[protocols[1]][:10])
	// Queue-mode devices wake with a registration update every 10 minutes and
	// sleep 5 minutes later, but not while an upgrade job runs on them
	// (NB-IoT devices leave PSM for the transfer). A device asleep when its
	// job starts gets the request with its next update.
	for _, d := range w.devices {
		d := d
		if !d.s.QueueMode {
			continue
		}
		for k := 1; k <= 40; k++ {
			w.at(time.Duration(k)*10*time.Minute-5*time.Minute, func() {
				if d.s.Job == nil {
					w.toDevice(d.id, &messages.DeviceInput{Kind: &messages.DeviceInput_Asleep{Asleep: &messages.Asleep{}}})
				}
			})
			w.at(time.Duration(k)*10*time.Minute, func() {
				w.toDevice(d.id, &messages.DeviceInput{Kind: &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{}}})
			})
		}
	}
	w.run(start.Add(24 * time.Hour))

	for _, id := range []string{"mqtt", "fota", "pcp"} {
		s := w.tasks[id]
		p := s.Progress()
		if s.Status() != messages.TaskStatus_TASK_STATUS_SUCCESS || p.Success != 200 || p.Total != 200 {
			var bad []string
			for _, st := range s.Subtasks(0, 200) {
				if st.Status != messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS {
					bad = append(bad, fmt.Sprintf("%s %v %q", st.DeviceID, st.Status, messages.ReasonText(st.Reason)))
				}
			}
			t.Errorf("task %s: %v %+v; not succeeded: %s", id, s.Status(), p, strings.Join(bad, "; "))
		}
		retried := 0
		for _, st := range s.Subtasks(0, 200) {
			if st.Attempt == 2 {
				retried++
			}
		}
		if retried == 0 {
			t.Errorf("task %s: no device needed its retry", id)
		}
	}
	// The late task's first attempts met "Task Conflict"; its retries, after
	// the first task had finished with those devices, succeed.
	late := w.tasks["late"]
	if late.Status() != messages.TaskStatus_TASK_STATUS_SUCCESS {
		t.Errorf("late task: %v %+v", late.Status(), late.Progress())
	}
	for _, st := range late.Subtasks(0, 10) {
		if st.Attempt != 2 {
			t.Errorf("late task: %s succeeded at attempt %d, want 2 (the first one conflicts)", st.DeviceID, st.Attempt)
		}
	}
	peak := 0
	for id, c := range w.cells {
		if c.Used() != 0 || c.Holders() != 0 || c.Waiting() != 0 {
			t.Errorf("cell %s keeps units after the campaign: used %d holders %d waiting %d", id, c.Used(), c.Holders(), c.Waiting())
		}
		peak = max(peak, w.peakHolders[id])
	}
	if peak < 20 {
		t.Errorf("at most %d devices upgraded at once in a cell; good coverage allows 50", peak)
	}
	if w.poorWithCompany != 0 {
		t.Errorf("a poor-coverage device shared its cell %d times", w.poorWithCompany)
	}
	for _, d := range w.devices {
		if d.s.Job != nil {
			t.Errorf("device %s still has a job in %v", d.id, d.s.Stage)
		}
	}
	t.Logf("peak devices per cell: %v; download tokens revoked: %d", w.peakHolders, w.revoked)
}
