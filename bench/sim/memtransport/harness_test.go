package memtransport_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
)

var start = time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)

func i32(v int32) *int32 { return &v }

// fsmEngine is a minimal engine: it runs the real devicefsm for each device
// against the Transport, grants every permit, and records outcomes. It can
// be taken "down" (deliveries fail, as to a crashed engine) and "recovered"
// with devicefsm.Resume, its states standing for the journal.
type fsmEngine struct {
	t   testing.TB
	clk clock.Clock
	cfg devicefsm.Config
	tr  *memtransport.Transport

	mu       sync.Mutex
	st       map[string]devicefsm.State
	outcomes map[string][]*messages.ReportOutcome
	down     bool
	gen      int // bumped by recover: timers of an earlier life are dropped
	// crashOn, when set, is asked about each downlink before it is sent: on
	// true the engine crashes instead (the downlink was journaled, never sent).
	crashOn func(*messages.Downlink) bool
	done    chan string
}

func newEngine(t testing.TB, clk clock.Clock) *fsmEngine {
	return &fsmEngine{
		t: t, clk: clk, cfg: devicefsm.DefaultConfig(),
		st: map[string]devicefsm.State{}, outcomes: map[string][]*messages.ReportOutcome{},
		done: make(chan string, 10000),
	}
}

var errDown = errors.New("engine down")

func (e *fsmEngine) Deliver(ctx context.Context, id string, in *messages.DeviceInput) error {
	e.mu.Lock()
	down := e.down
	e.mu.Unlock()
	if down {
		return errDown
	}
	e.step(id, proto.Clone(in).(*messages.DeviceInput))
	return nil
}

func (e *fsmEngine) step(id string, in *messages.DeviceInput) {
	e.mu.Lock()
	if e.down {
		e.mu.Unlock()
		return
	}
	s, ok := e.st[id]
	if !ok {
		s = devicefsm.New(id)
	}
	in.AtUnixNano = messages.UnixNano(e.clk.Now())
	next, res, err := devicefsm.Step(e.cfg, s, in)
	if err != nil {
		e.mu.Unlock()
		e.t.Errorf("device %s: Step(%v): %v", id, in, err)
		return
	}
	e.st[id] = next
	gen := e.gen
	e.mu.Unlock()
	e.effects(id, gen, res.Effects)
}

func (e *fsmEngine) effects(id string, gen int, effects []*messages.DeviceEffect) {
	ctx := context.Background()
	for _, eff := range effects {
		switch k := eff.Kind.(type) {
		case *messages.DeviceEffect_Downlink:
			e.mu.Lock()
			crash := !e.down && e.crashOn != nil && e.crashOn(k.Downlink)
			if crash {
				e.crashOn = nil
			}
			e.mu.Unlock()
			if crash {
				e.crash()
				return // the process is gone: nothing after it happens
			}
			err := e.tr.Send(ctx, k.Downlink)
			if err != nil && !errors.Is(err, memtransport.ErrOffline) {
				e.t.Errorf("Send: %v", err)
			}
		case *messages.DeviceEffect_ArmDeadline:
			a := k.ArmDeadline
			e.clk.AfterFunc(max(messages.Time(a.GetAtUnixNano()).Sub(e.clk.Now()), 0), func() { // at 0: at once
				if e.alive(gen) {
					e.step(id, &messages.DeviceInput{Kind: &messages.DeviceInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: a.GetStep(), Generation: a.GetGeneration()}}})
				}
			})
		case *messages.DeviceEffect_RequestPermit:
			r := k.RequestPermit
			e.clk.AfterFunc(0, func() {
				if e.alive(gen) {
					e.step(id, &messages.DeviceInput{Kind: &messages.DeviceInput_PermitGranted{PermitGranted: &messages.PermitGranted{CellId: r.GetCellId(), DeviceId: id}}})
				}
			})
		case *messages.DeviceEffect_ReleasePermit:
		case *messages.DeviceEffect_ReportOutcome:
			e.mu.Lock()
			e.outcomes[id] = append(e.outcomes[id], k.ReportOutcome)
			e.mu.Unlock()
			e.done <- id
		case *messages.DeviceEffect_RevokeToken:
			if err := e.tr.RevokeToken(ctx, k.RevokeToken); err != nil {
				e.t.Errorf("RevokeToken: %v", err)
			}
		default:
			e.t.Errorf("unhandled effect %T", k)
		}
	}
}

func (e *fsmEngine) alive(gen int) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.down && e.gen == gen
}

// crash: deliveries fail and armed timers are forgotten.
func (e *fsmEngine) crash() {
	e.mu.Lock()
	e.down = true
	e.gen++
	e.mu.Unlock()
}

// recover restarts the engine from its states (the journal) and runs Resume.
func (e *fsmEngine) recover() {
	e.mu.Lock()
	e.down = false
	gen := e.gen
	type resumed struct {
		id  string
		eff []*messages.DeviceEffect
	}
	var all []resumed
	for id, s := range e.st {
		all = append(all, resumed{id, devicefsm.Resume(s)})
	}
	e.mu.Unlock()
	for _, r := range all {
		e.effects(r.id, gen, r.eff)
	}
}

func (e *fsmEngine) start(id string, job *messages.Job) {
	e.step(id, &messages.DeviceInput{Kind: &messages.DeviceInput_StartJob{StartJob: &messages.StartJob{DeviceId: id, Job: job}}})
}

func (e *fsmEngine) state(id string) devicefsm.State {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st[id]
}

func (e *fsmEngine) last(id string) *messages.ReportOutcome {
	e.mu.Lock()
	defer e.mu.Unlock()
	o := e.outcomes[id]
	if len(o) == 0 {
		return nil
	}
	return o[len(o)-1]
}

// world bundles a fake clock, an engine and a transport.
type world struct {
	t   *testing.T
	clk *clocktest.Clock
	eng *fsmEngine
	tr  *memtransport.Transport
}

func newWorld(t *testing.T, cfg memtransport.Config) *world {
	t.Helper()
	clk := clocktest.New(start)
	eng := newEngine(t, clk)
	tr, err := memtransport.New(cfg, clk, eng, nil)
	if err != nil {
		t.Fatal(err)
	}
	eng.tr = tr
	t.Cleanup(func() { tr.Close() })
	return &world{t: t, clk: clk, eng: eng, tr: tr}
}

func (w *world) add(spec memtransport.DeviceSpec) {
	w.t.Helper()
	if err := w.tr.Add(spec); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) connect(id string) {
	w.t.Helper()
	if err := w.tr.Connect(context.Background(), id); err != nil {
		w.t.Fatal(err)
	}
}

// runUntilOutcome advances the clock in steps until device id reported an
// outcome (or limit of clock time passed) and returns it.
func (w *world) runUntilOutcome(id string, limit time.Duration) *messages.ReportOutcome {
	w.t.Helper()
	end := w.clk.Now().Add(limit)
	n := len(w.outcomesOf(id))
	for w.clk.Now().Before(end) {
		w.clk.Advance(100 * time.Millisecond)
		if o := w.outcomesOf(id); len(o) > n {
			return o[len(o)-1]
		}
	}
	w.t.Fatalf("device %s: no outcome within %v; stage %v", id, limit, w.eng.state(id).Stage)
	return nil
}

func (w *world) outcomesOf(id string) []*messages.ReportOutcome {
	w.eng.mu.Lock()
	defer w.eng.mu.Unlock()
	return append([]*messages.ReportOutcome(nil), w.eng.outcomes[id]...)
}

func job(p messages.Protocol, task string, attempt uint32, version string) *messages.Job {
	tt := messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE
	if p == messages.Protocol_PROTOCOL_LWM2M_PCP {
		tt = messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE
	}
	return &messages.Job{
		TaskId: task, Attempt: attempt, TaskType: tt, Protocol: p,
		Package: &messages.Package{PackageId: "pkg-" + version, Version: version, Size: 2000, SegmentSize: 500, CheckCode: 7},
	}
}

func spec(id string, p messages.Protocol) memtransport.DeviceSpec {
	return memtransport.DeviceSpec{
		ID: id, Protocol: p, FwVersion: "1.0", SwVersion: "1.0", CellID: "cell-1", RSRP: i32(-90), SINR: i32(12),
	}
}

var protocols = []messages.Protocol{
	messages.Protocol_PROTOCOL_MQTT, messages.Protocol_PROTOCOL_LWM2M_FOTA, messages.Protocol_PROTOCOL_LWM2M_PCP,
}

func short(p messages.Protocol) string {
	switch p {
	case messages.Protocol_PROTOCOL_MQTT:
		return "mqtt"
	case messages.Protocol_PROTOCOL_LWM2M_FOTA:
		return "fota"
	default:
		return "pcp"
	}
}

func version(ds memtransport.DeviceState) string {
	if ds.Protocol == messages.Protocol_PROTOCOL_LWM2M_PCP {
		return ds.SwVersion
	}
	return ds.FwVersion
}

func checkOutcome(t *testing.T, o *messages.ReportOutcome, status messages.SubtaskStatus, reason messages.Reason) {
	t.Helper()
	if o.GetStatus() != status || o.GetReason() != reason {
		t.Fatalf("outcome %v %v (%q, code %d), want %v %v", o.GetStatus(), o.GetReason(), o.GetDetail(), o.GetResultCode(), status, reason)
	}
}

func mustDevice(t *testing.T, tr *memtransport.Transport, id string) memtransport.DeviceState {
	t.Helper()
	ds, ok := tr.Device(id)
	if !ok {
		t.Fatalf("no device %s", id)
	}
	return ds
}

func label(p messages.Protocol, s string) string { return fmt.Sprintf("%s/%s", short(p), s) }
