package actors

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// ---- device ----

type deviceMachine struct {
	e *Engine
	s devicefsm.State
	// lastReport is the last report whose step journaled events, with its
	// arrival time cleared, as long as no other input has journaled events
	// since; nil otherwise. It lives only in memory: after passivation or a
	// restart the first repeat of it is stepped like any report.
	lastReport *messages.DeviceInput
	// pub is the entry this actor last put in the engine's job table
	// (pubOK: it put one, and has not deleted it since).
	pub   JobStage
	pubOK bool
	// route is the cluster address of the node whose transport last
	// delivered this device's input (messages.DeviceInput.Route): its
	// downlinks go there. It lives only in memory; "" until an input
	// names one (a successor on another node sends to every node until
	// then).
	route string
}

func (m *deviceMachine) eventType() uint32 { return persistence.EventTypeDevice }

func (m *deviceMachine) apply(b []byte) error {
	ev := &messages.DeviceEvent{}
	if err := proto.Unmarshal(b, ev); err != nil {
		return err
	}
	m.s = devicefsm.Evolve(m.s, ev)
	return nil
}

func (m *deviceMachine) restore(snap persistence.Snapshot) error { return restoreDevice(m, snap) }
func (m *deviceMachine) snapshot() (persistence.Snapshot, error) { return snapshotDevice(m.s) }
func (m *deviceMachine) commit(next any) {
	m.s = next.(devicefsm.State)
	m.publish()
}
func (m *deviceMachine) active(next any) bool { return next.(devicefsm.State).Job != nil }
func (m *deviceMachine) idle() bool           { return m.s.Job == nil }
func (m *deviceMachine) view(any) any         { return DeviceView{State: m.s} }
func (m *deviceMachine) deadline(step string, gen uint64) proto.Message {
	return &messages.DeviceInput{Kind: &messages.DeviceInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: step, Generation: gen}}}
}

func (m *deviceMachine) step(in proto.Message) (any, []proto.Message, []proto.Message, error) {
	di, ok := in.(*messages.DeviceInput)
	if !ok {
		return nil, nil, nil, fmt.Errorf("actors: a device takes DeviceInput, not %T", in)
	}
	if r := di.GetRoute(); r != "" {
		m.route = r
	}
	next, res, err := devicefsm.Step(m.e.cfg.Device, m.s, di)
	if err != nil {
		return nil, nil, nil, err
	}
	m.noteReport(di, len(res.Events) > 0)
	return next, protos(res.Events), protos(res.Effects), nil
}

// noteReport keeps lastReport and counts duplicates: a report identical to
// the last one journaled (apart from its arrival time, with nothing journaled
// since) is counted in otafleet_uplinks_duplicate_total. It is still stepped,
// so its effects run (an acknowledgement or a segment the device asks for
// again because it lost ours), and a step of it that does change the state
// is journaled like any other: a duplicate is never a reason to drop events.
// The device machine journals nothing for a plain repeat, so a duplicate
// costs no journal write.
func (m *deviceMachine) noteReport(in *messages.DeviceInput, journals bool) {
	if !in.IsReport() {
		if journals {
			m.lastReport = nil
		}
		return
	}
	key := proto.CloneOf(in)
	key.AtUnixNano, key.NoAck, key.Route = 0, false, ""

	switch {
	case journals:
		m.lastReport = key
	case m.lastReport != nil && proto.Equal(key, m.lastReport):
		m.e.metrics.duplicates.WithLabelValues(in.KindName()).Inc()
	}
}

// resume redoes the pending work of a device with a job. An idle device has
// none: if a crash lost its last outcome, the task's re-sent StartJob gets it
// repeated (devicefsm answers a finished job's StartJob with its outcome).
func (m *deviceMachine) resume() (any, []proto.Message, []proto.Message, error) {
	if m.s.Job == nil {
		return nil, nil, nil, nil
	}
	return nil, nil, protos(devicefsm.Resume(m.s)), nil
}

// resend repeats the device's requests and answers to cells and tasks
// (devicefsm.Resume's, the idle device's last release and outcome too):
// a permit request, a release, an outcome; cells and tasks take a repeat
// as a no-op or, for a lost grant, by granting again.
func (m *deviceMachine) resend(lost func(Address) bool) []proto.Message {
	var out []proto.Message
	for _, eff := range devicefsm.Resume(m.s) {
		var to Address
		switch k := eff.Kind.(type) {
		case *messages.DeviceEffect_RequestPermit:
			to = Address{Kind: persistence.KindCell, ID: k.RequestPermit.GetCellId()}
		case *messages.DeviceEffect_ReleasePermit:
			to = Address{Kind: persistence.KindCell, ID: k.ReleasePermit.GetCellId()}
		case *messages.DeviceEffect_ReportOutcome:
			to = Address{Kind: persistence.KindTask, ID: k.ReportOutcome.GetTaskId()}
		default:
			continue
		}
		if lost(to) {
			out = append(out, eff)
		}
	}
	return out
}

func (m *deviceMachine) run(sh *shell, effects []proto.Message) {
	ctx := context.Background()
	for _, eff := range effects {
		switch k := eff.(*messages.DeviceEffect).Kind.(type) {
		case *messages.DeviceEffect_Downlink:
			if m.e.node != nil {
				m.e.downlink(m.route, &messages.EdgeDownlink{Kind: &messages.EdgeDownlink_Downlink{Downlink: k.Downlink}})
				continue
			}
			if err := m.e.deps.Transport.Send(ctx, k.Downlink); err != nil {
				m.e.log.Warn("downlink not sent", "device", m.s.DeviceID, "error", err)
			}
		case *messages.DeviceEffect_ArmDeadline:
			sh.armDeadline(k.ArmDeadline)
		case *messages.DeviceEffect_RequestPermit:
			m.e.dir.send(Address{Kind: persistence.KindCell, ID: k.RequestPermit.GetCellId()},
				&messages.CellInput{Kind: &messages.CellInput_RequestPermit{RequestPermit: k.RequestPermit}})
		case *messages.DeviceEffect_ReleasePermit:
			m.e.dir.send(Address{Kind: persistence.KindCell, ID: k.ReleasePermit.GetCellId()},
				&messages.CellInput{Kind: &messages.CellInput_ReleasePermit{ReleasePermit: k.ReleasePermit}})
		case *messages.DeviceEffect_ReportOutcome:
			m.e.dir.send(Address{Kind: persistence.KindTask, ID: k.ReportOutcome.GetTaskId()},
				&messages.TaskInput{Kind: &messages.TaskInput_Outcome{Outcome: k.ReportOutcome}})
		case *messages.DeviceEffect_RevokeToken:
			if m.e.node != nil {
				m.e.downlink(m.route, &messages.EdgeDownlink{Kind: &messages.EdgeDownlink_RevokeToken{RevokeToken: k.RevokeToken}})
				continue
			}
			if err := m.e.deps.Transport.RevokeToken(ctx, k.RevokeToken); err != nil {
				m.e.log.Warn("token not revoked", "device", m.s.DeviceID, "error", err)
			}
		}
	}
}

// refused answers a StartJob the device refused as a whole (an actor that
// cannot recover refuses every input) with the job's outcome
// (devicefsm.Refused), so its sub-task ends. A job the machine cannot run
// is no refusal: the machine rejects it with its outcome itself.
func (m *deviceMachine) refused(in proto.Message, err error) []proto.Message {
	di, _ := in.(*messages.DeviceInput)
	if o := devicefsm.Refused(m.s.DeviceID, di, err); o != nil {
		return []proto.Message{&messages.DeviceEffect{Kind: &messages.DeviceEffect_ReportOutcome{ReportOutcome: o}}}
	}
	return nil
}

// ---- cell ----

type cellMachine struct {
	e *Engine
	s cellfsm.State
	// drafted, when set, is the state the next step starts from: that of
	// the shell's batch, not committed yet (see drafter).
	drafted *cellfsm.State
}

func (m *cellMachine) draft(next any) {
	s := next.(cellfsm.State)
	m.drafted = &s
}

func (m *cellMachine) eventType() uint32 { return persistence.EventTypeCell }

func (m *cellMachine) apply(b []byte) error {
	ev := &messages.CellEvent{}
	if err := proto.Unmarshal(b, ev); err != nil {
		return err
	}
	m.s = cellfsm.Evolve(m.s, ev)
	return nil
}

func (m *cellMachine) restore(snap persistence.Snapshot) error { return restoreCell(m, snap) }
func (m *cellMachine) snapshot() (persistence.Snapshot, error) { return snapshotCell(m.s) }
func (m *cellMachine) active(next any) bool {
	s := next.(cellfsm.State)
	return s.Holders() > 0 || s.Waiting() > 0
}
func (m *cellMachine) idle() bool                            { return m.s.Holders() == 0 && m.s.Waiting() == 0 }
func (m *cellMachine) view(any) any                          { return m.s }
func (m *cellMachine) deadline(string, uint64) proto.Message { return nil }

func (m *cellMachine) commit(next any) {
	s := next.(cellfsm.State)
	m.e.metrics.setUsed(s.Cell, s.Used())
	m.e.metrics.waiting.Add(float64(s.Waiting() - m.s.Waiting()))
	m.s, m.drafted = s, nil
	m.e.cellModels.publish(s, m.e.cfg.Cell.Budget)
	m.e.metrics.raisePeak(s.Used())
	if err := s.Check(m.e.cfg.Cell); err != nil {
		m.e.metrics.violations.Inc()
		m.e.log.Error("cell budget invariant broken", "cell", s.Cell, "error", err)
	}
	if m.e.deps.CellStepped != nil {
		m.e.deps.CellStepped(s.Cell, s)
	}
}

func (m *cellMachine) step(in proto.Message) (any, []proto.Message, []proto.Message, error) {
	ci, ok := in.(*messages.CellInput)
	if !ok {
		return nil, nil, nil, fmt.Errorf("actors: a cell takes CellInput, not %T", in)
	}
	cur := m.s
	if m.drafted != nil {
		cur = *m.drafted
	}
	next, res, err := cellfsm.Step(m.e.cfg.Cell, cur, ci)
	if err != nil {
		return nil, nil, nil, err
	}
	return next, protos(res.Events), protos(res.Effects), nil
}

// resume re-grants every holder (a device that no longer wants its slot
// hands it back) and admits whoever fits a budget raised since the crash.
func (m *cellMachine) resume() (any, []proto.Message, []proto.Message, error) {
	effects := protos(cellfsm.Resume(m.s))
	next, res, err := cellfsm.Admit(m.e.cfg.Cell, m.s, messages.UnixNano(m.e.deps.Clock.Now()))
	if err != nil {
		return nil, nil, nil, err
	}
	return next, protos(res.Events), append(effects, protos(res.Effects)...), nil
}

func (m *cellMachine) refused(proto.Message, error) []proto.Message { return nil }

// resend repeats the grants of the holders (cellfsm.Resume): a device
// that holds its slot ignores a repeat, one that no longer wants it hands
// it back (so a release lost on its way here is made good).
func (m *cellMachine) resend(lost func(Address) bool) []proto.Message {
	var out []proto.Message
	for _, eff := range cellfsm.Resume(m.s) {
		if g := eff.GetGrant(); g != nil && lost(Address{Kind: persistence.KindDevice, ID: g.GetDeviceId()}) {
			out = append(out, eff)
		}
	}
	return out
}

func (m *cellMachine) run(_ *shell, effects []proto.Message) {
	for _, eff := range effects {
		if g := eff.(*messages.CellEffect).GetGrant(); g != nil {
			m.e.dir.send(Address{Kind: persistence.KindDevice, ID: g.GetDeviceId()},
				&messages.DeviceInput{Kind: &messages.DeviceInput_PermitGranted{PermitGranted: g}})
		}
	}
}

// ---- task ----

type taskMachine struct {
	e *Engine
	s taskfsm.State
	// events are those of the step being committed: commit publishes the
	// rows they name to model, the task's read model (nil until the task
	// is created and recovered).
	events []proto.Message
	model  *taskModel
	// header is the task's header as last written (nil before the task
	// exists): a step writes it again only when it changed.
	header *messages.TaskHeader
	// drafted, when set, is the state the next step starts from: that of
	// the shell's batch, not committed yet (see drafter); events then holds
	// the events of every step of the batch.
	drafted *taskfsm.State
}

func (m *taskMachine) draft(next any) {
	s := next.(taskfsm.State)
	m.drafted = &s
}

func (m *taskMachine) eventType() uint32 { return persistence.EventTypeTask }

func (m *taskMachine) apply(b []byte) error {
	ev := &messages.TaskEvent{}
	if err := proto.Unmarshal(b, ev); err != nil {
		return err
	}
	m.s = taskfsm.Evolve(m.s, ev)
	return nil
}

// restore reads the whole-task snapshot of a stream written before tasks
// kept records; a task writes none (see keeper).
func (m *taskMachine) restore(snap persistence.Snapshot) error { return restoreTask(m, snap) }
func (m *taskMachine) snapshot() (persistence.Snapshot, error) {
	return persistence.Snapshot{}, errNoSnapshot
}

// records: the definition when the task is created, the header when it
// changed, the rows of the sub-tasks the step touched.
func (m *taskMachine) records(next any, events []proto.Message) ([]persistence.Record, error) {
	s := next.(taskfsm.State)
	if !s.Created() {
		return nil, nil
	}
	evs := make([]*messages.TaskEvent, len(events))
	for i, e := range events {
		evs[i] = e.(*messages.TaskEvent)
	}
	return taskRecords(s, !m.s.Created(), &m.header, taskfsm.Touched(m.s, s, evs))
}

func (m *taskMachine) all() ([]persistence.Record, error) {
	if !m.s.Created() {
		return nil, nil
	}
	rows := make([]int, m.s.Progress().Total)
	for i := range rows {
		rows[i] = i
	}
	m.header = nil
	return taskRecords(m.s, true, &m.header, rows)
}

func (m *taskMachine) load(recs []persistence.Record) (bool, error) {
	s, h, ok, err := loadTask(recs)
	if ok && err == nil {
		m.s, m.header = s, h
	}
	return ok, err
}

func (m *taskMachine) active(next any) bool {
	s := next.(taskfsm.State)
	return s.Created() && !s.Status().Final()
}
func (m *taskMachine) idle() bool { return !m.s.Created() || m.s.Status().Final() }
func (m *taskMachine) deadline(step string, gen uint64) proto.Message {
	return &messages.TaskInput{Kind: &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: step, Generation: gen}}}
}

func (m *taskMachine) commit(next any) {
	s := next.(taskfsm.State)
	m.e.metrics.addProgress(m.s.Progress(), -1)
	m.e.metrics.addProgress(s.Progress(), +1)
	m.s, m.drafted = s, nil
	events := m.events
	m.events = nil
	switch {
	case m.model == nil && s.Created():
		m.model = m.e.taskModels.open(s)
	case m.model != nil && len(events) > 0:
		m.model.publish(s, events)
	}
}

func (m *taskMachine) step(in proto.Message) (any, []proto.Message, []proto.Message, error) {
	ti, ok := in.(*messages.TaskInput)
	if !ok {
		return nil, nil, nil, fmt.Errorf("actors: a task takes TaskInput, not %T", in)
	}
	cur := m.s
	if m.drafted != nil {
		cur = *m.drafted
	}
	next, res, err := taskfsm.Step(m.e.cfg.Task, cur, ti)
	if err != nil {
		return nil, nil, nil, err
	}
	events := protos(res.Events)
	if m.drafted != nil {
		m.events = append(m.events, events...) // commit publishes the batch's
	} else {
		m.events = events
	}
	return next, events, protos(res.Effects), nil
}

func (m *taskMachine) resume() (any, []proto.Message, []proto.Message, error) {
	return nil, nil, protos(taskfsm.Resume(m.s)), nil
}

// The gauges count the state of live actors: a recovered state joins them,
// a stopped actor's leaves.
// A recovered task publishes its read model; a stopped one withdraws it.
func (m *taskMachine) activated() {
	m.e.metrics.addProgress(m.s.Progress(), +1)
	if m.s.Created() {
		m.model = m.e.taskModels.open(m.s)
	}
}

func (m *taskMachine) deactivated() {
	m.e.metrics.addProgress(m.s.Progress(), -1)
	if m.model != nil {
		m.e.taskModels.drop(m.s.TaskID(), m.model)
		m.model = nil
	}
}

func (m *cellMachine) activated() {
	m.e.cellModels.publish(m.s, m.e.cfg.Cell.Budget)
	m.e.metrics.setUsed(m.s.Cell, m.s.Used())
	m.e.metrics.waiting.Add(float64(m.s.Waiting()))
}

func (m *cellMachine) deactivated() {
	m.e.cellModels.drop(m.s.Cell)
	m.e.metrics.setUsed(m.s.Cell, 0)
	m.e.metrics.waiting.Sub(float64(m.s.Waiting()))
}

// A recovered device publishes its job (or withdraws an entry a former
// actor left, so that the table answers what the journal holds); a stopped
// one leaves its entry: its job cannot change until its successor recovers.
func (m *deviceMachine) activated() {
	m.pubOK = true // whatever a former actor left
	m.publish()
}
func (m *deviceMachine) deactivated() {}

// unrecovered withdraws the device's entry when its actor cannot recover:
// it refuses every input and answers no query, so it shows no stage.
func (m *deviceMachine) unrecovered() { m.e.jobs.drop(m.s.DeviceID) }

// publish brings the device's entry in the engine's job table up to its
// state: set when it changed, deleted when the job ended.
func (m *deviceMachine) publish() {
	j, ok := jobStageOf(&m.s)
	switch {
	case ok && (!m.pubOK || j != m.pub):
		m.e.jobs.set(m.s.DeviceID, j)
	case !ok && m.pubOK:
		m.e.jobs.drop(m.s.DeviceID)
	}
	m.pub, m.pubOK = j, ok
}

// view answers a query asked of the actor: only for a task that was not
// live when asked (Engine.TaskDevices reads the read model of a live one).
func (m *taskMachine) view(q any) any {
	if !m.s.Created() {
		return fmt.Errorf("%w: task", ErrNotFound)
	}
	v := TaskView{Task: m.s.Task(), Status: m.s.Status(), Progress: m.s.Progress(), CreatedAt: m.s.CreatedAt(), FinishedAt: m.s.FinishedAt()}
	tq, ok := q.(taskQuery)
	if !ok || tq.limit <= 0 {
		return v
	}
	skipped := 0
	for off := 0; len(v.Subtasks) < tq.limit; off += 512 {
		page := m.s.Subtasks(off, 512)
		if len(page) == 0 {
			break
		}
		for _, st := range page {
			if tq.status != 0 && st.Status != tq.status {
				continue
			}
			if skipped < tq.offset {
				skipped++
				continue
			}
			if len(v.Subtasks) < tq.limit {
				v.Subtasks = append(v.Subtasks, st)
			}
		}
	}
	return v
}

func (m *taskMachine) refused(proto.Message, error) []proto.Message { return nil }

// resend repeats the StartJob (or StopJob) of every sub-task in progress
// (taskfsm.Resume's, without its deadline): a device that runs the job
// ignores it, one that finished it answers with its outcome again, one
// that never got it starts it.
func (m *taskMachine) resend(lost func(Address) bool) []proto.Message {
	var out []proto.Message
	for _, eff := range taskfsm.Resume(m.s) {
		var dev string
		switch k := eff.Kind.(type) {
		case *messages.TaskEffect_StartJob:
			dev = k.StartJob.GetDeviceId()
		case *messages.TaskEffect_StopJob:
			dev = k.StopJob.GetDeviceId()
		default:
			continue
		}
		if lost(Address{Kind: persistence.KindDevice, ID: dev}) {
			out = append(out, eff)
		}
	}
	return out
}

func (m *taskMachine) run(sh *shell, effects []proto.Message) {
	for _, eff := range effects {
		switch k := eff.(*messages.TaskEffect).Kind.(type) {
		case *messages.TaskEffect_StartJob:
			m.e.dir.send(Address{Kind: persistence.KindDevice, ID: k.StartJob.GetDeviceId()},
				&messages.DeviceInput{Kind: &messages.DeviceInput_StartJob{StartJob: k.StartJob}})
		case *messages.TaskEffect_StopJob:
			m.e.dir.send(Address{Kind: persistence.KindDevice, ID: k.StopJob.GetDeviceId()},
				&messages.DeviceInput{Kind: &messages.DeviceInput_StopJob{StopJob: k.StopJob}})
		case *messages.TaskEffect_ArmDeadline:
			sh.armDeadline(k.ArmDeadline)
		}
	}
}

// protos converts a slice of generated messages to []proto.Message.
func protos[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}
