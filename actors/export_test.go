package actors

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// AskTask asks a task's actor for its view, as a query of a task that is
// not live does: tests compare it with the read model's answer.
func (e *Engine) AskTask(ctx context.Context, taskID string, offset, limit int, status messages.SubtaskStatus) (TaskView, error) {
	return e.askTask(ctx, taskID, offset, limit, status)
}

// TaskStates reads task taskID from store twice: folded from its whole
// journal (every event from the first, with taskfsm.Evolve) and as a task
// actor recovers it (its records, or else its snapshot and journal tail).
// fromRecords tells which way the actor's read went.
func TaskStates(ctx context.Context, store persistence.EventStore, taskID string) (folded, recovered taskfsm.State, fromRecords bool, err error) {
	st := persistence.Stream{Kind: persistence.KindTask, ID: taskID}
	err = store.Load(ctx, st, 0, func(ev persistence.Event) error {
		e := &messages.TaskEvent{}
		if err := proto.Unmarshal(ev.Payload, e); err != nil {
			return err
		}
		folded = taskfsm.Evolve(folded, e)
		return nil
	})
	if err != nil {
		return
	}
	var recs []persistence.Record
	if err = store.LoadRecords(ctx, st, func(r persistence.Record) error { recs = append(recs, r); return nil }); err != nil {
		return
	}
	recovered, _, fromRecords, err = loadTask(recs)
	if err != nil || fromRecords {
		return
	}
	m := &taskMachine{}
	snap, ok, err := store.LoadSnapshot(ctx, st)
	if err != nil {
		return
	}
	var after uint64
	if ok {
		if err = m.restore(snap); err != nil {
			return
		}
		after = snap.Seq
	}
	err = store.Load(ctx, st, after, func(ev persistence.Event) error { return m.apply(ev.Payload) })
	return folded, m.s, false, err
}

// OldTaskSnapshot is the whole-task snapshot of s that task actors wrote
// before they kept records.
func OldTaskSnapshot(s taskfsm.State) (persistence.Snapshot, error) {
	return encodeSnapshot(typeTaskSnapshot, taskfsm.Snapshot(s))
}

// JobStageOf is the job table entry a device actor in state s publishes.
func JobStageOf(s devicefsm.State) (JobStage, bool) { return jobStageOf(&s) }

// JobCount is the number of entries in the engine's job table.
func (e *Engine) JobCount() int { return e.jobs.len() }

// CellViewOf is the view a cell's actor publishes of s: tests compare it,
// built from the state the actor answers, with the published one.
func CellViewOf(s cellfsm.State, budget uint32) *CellView { return cellViewOf(s, budget) }

// SendCell delivers in to cell cellID's actor, as a device's effect does.
func (e *Engine) SendCell(cellID string, in *messages.CellInput) {
	e.dir.send(Address{Kind: persistence.KindCell, ID: cellID}, in)
}

// SendTask delivers in to task taskID's actor, as a device's effect does.
func (e *Engine) SendTask(taskID string, in *messages.TaskInput) {
	e.dir.send(Address{Kind: persistence.KindTask, ID: taskID}, in)
}
