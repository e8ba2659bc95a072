package cellfsm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/otafleet/otafleet/messages"
)

// Sentinel errors. Returned errors wrap one of them; match with errors.Is.
var (
	// ErrInvalidInput: a malformed input (nil kind, missing or foreign IDs).
	ErrInvalidInput = errors.New("cellfsm: invalid input")
	// ErrInvalidConfig: Config.Validate failed.
	ErrInvalidConfig = errors.New("cellfsm: invalid config")
	// ErrNoCell: Step or Admit on a State that was not built with New.
	ErrNoCell = errors.New("cellfsm: state has no cell ID")
	// ErrInvariant: State.Check found a broken invariant.
	ErrInvariant = errors.New("cellfsm: invariant violated")
)

// Job names the job a device asks a slot for: a task and its attempt
// (messages.RequestPermit's task_id and attempt). A request for another job
// than the one a device holds or waits for is costed afresh; a repeat of the
// same job's request changes nothing. Requests and events that name no job
// have the zero Job.
type Job struct {
	TaskID  string
	Attempt uint32
}

// Slot is a device holding part of the cell's budget.
type Slot struct {
	Level messages.CoverageLevel // coverage when it asked
	Cost  uint32                 // units it holds, as journaled in PermitQueued
	Job   Job                    // the job it was granted for
}

// Waiter is a device in the cell's FIFO queue. A holder in the queue waits
// for the units its new job costs more than it holds.
type Waiter struct {
	DeviceID string
	Level    messages.CoverageLevel
	Cost     uint32 // units it will hold once granted, as journaled in PermitQueued
	Job      Job    // the job it waits for
}

// State is one cell's radio budget: who holds units and who waits, in order.
// Build it with New; the zero value is a valid state of a cell without an ID
// (Evolve, Resume and the read helpers accept it, Step refuses it).
type State struct {
	// Cell is the cell ID, the actor's identity. Step refuses inputs for
	// another cell.
	Cell string
	// Slots maps each holder's device ID to what it holds. May be nil.
	Slots map[string]Slot
	// Queue holds the waiting requests, head first.
	Queue []Waiter
	// InUse is the sum of Slots' costs.
	InUse uint32
}

// New returns the empty state of the cell cellID.
func New(cellID string) State {
	return State{Cell: cellID, Slots: map[string]Slot{}}
}

// Result is what the caller must do, in order: persist Events, then run Effects.
type Result struct {
	Events  []*messages.CellEvent
	Effects []*messages.CellEffect
}

// Used returns the units in use.
func (s State) Used() uint32 { return s.InUse }

// Holders returns the number of devices holding units. A holder waiting for
// a new job's units counts here and in Waiting.
func (s State) Holders() int { return len(s.Slots) }

// Waiting returns the number of devices in the queue.
func (s State) Waiting() int { return len(s.Queue) }

// Check verifies the state's invariants against cfg: InUse equals the sum of
// the holders' costs; InUse is within cfg.Budget unless a single holder
// holds more than the budget alone (a cost clamped at admission); every
// device ID is non-empty and appears once among the holders and once in the
// queue; a device both holding and waiting waits for a higher cost than it
// holds (a new job's); every cost is at least 1. The error wraps
// ErrInvariant.
//
// A state replayed from events written under a larger budget may exceed a
// smaller cfg.Budget until the devices admitted under the old one release;
// Check reports that too.
func (s State) Check(cfg Config) error {
	var sum uint64
	for id, h := range s.Slots {
		if id == "" {
			return fmt.Errorf("%w: holder with empty device ID", ErrInvariant)
		}
		if h.Cost == 0 {
			return fmt.Errorf("%w: holder %q has cost 0", ErrInvariant, id)
		}
		sum += uint64(h.Cost)
	}
	if sum != uint64(s.InUse) {
		return fmt.Errorf("%w: used %d != sum of holder costs %d", ErrInvariant, s.InUse, sum)
	}
	if s.InUse > cfg.Budget && len(s.Slots) != 1 {
		return fmt.Errorf("%w: used %d > budget %d with %d holders", ErrInvariant, s.InUse, cfg.Budget, len(s.Slots))
	}
	seen := make(map[string]bool, len(s.Queue))
	for i, w := range s.Queue {
		switch {
		case w.DeviceID == "":
			return fmt.Errorf("%w: queue[%d] has empty device ID", ErrInvariant, i)
		case w.Cost == 0:
			return fmt.Errorf("%w: queue[%d] %q has cost 0", ErrInvariant, i, w.DeviceID)
		case seen[w.DeviceID]:
			return fmt.Errorf("%w: %q queued twice", ErrInvariant, w.DeviceID)
		}
		if h, ok := s.Slots[w.DeviceID]; ok && w.Cost <= h.Cost {
			return fmt.Errorf("%w: %q holds %d units and waits for %d", ErrInvariant, w.DeviceID, h.Cost, w.Cost)
		}
		seen[w.DeviceID] = true
	}
	return nil
}

// Step decides what the input means for the cell, applies the resulting
// events with Evolve and returns the new state with the events to persist and
// the effects to run. It may modify s's map and slice in place; on error it
// returns s unmodified and an empty Result.
func Step(cfg Config, s State, in *messages.CellInput) (State, Result, error) {
	if err := cfg.Validate(); err != nil {
		return s, Result{}, err
	}
	if in == nil {
		return s, Result{}, fmt.Errorf("%w: nil input", ErrInvalidInput)
	}
	at := in.GetAtUnixNano()
	switch k := in.GetKind().(type) {
	case *messages.CellInput_RequestPermit:
		r := k.RequestPermit
		if err := checkIDs(s, "request_permit", r); err != nil {
			return s, Result{}, err
		}
		return request(cfg, s, at, r)
	case *messages.CellInput_ReleasePermit:
		r := k.ReleasePermit
		if err := checkIDs(s, "release_permit", r); err != nil {
			return s, Result{}, err
		}
		return release(cfg, s, at, r.GetDeviceId())
	default:
		return s, Result{}, fmt.Errorf("%w: input has no kind", ErrInvalidInput)
	}
}

type idMessage interface {
	GetCellId() string
	GetDeviceId() string
}

func checkIDs(s State, kind string, m idMessage) error {
	switch {
	case m.GetDeviceId() == "":
		return fmt.Errorf("%w: %s.device_id is empty", ErrInvalidInput, kind)
	case m.GetCellId() == "":
		return fmt.Errorf("%w: %s.cell_id is empty", ErrInvalidInput, kind)
	case s.Cell == "":
		return fmt.Errorf("%w: build the state with New before Step", ErrNoCell)
	case m.GetCellId() != s.Cell:
		return fmt.Errorf("%w: %s.cell_id %q is not this cell %q", ErrInvalidInput, kind, m.GetCellId(), s.Cell)
	}
	return nil
}

func request(cfg Config, s State, at int64, r *messages.RequestPermit) (State, Result, error) {
	dev := r.GetDeviceId()
	job := Job{TaskID: r.GetTaskId(), Attempt: r.GetAttempt()}
	h, holds := s.Slots[dev]
	i := queued(s, dev)
	switch {
	case i >= 0 && (s.Queue[i].Job == job || holds && h.Job == job):
		// Already waiting for this job in its place, or a stale repeat of
		// the job it holds for while it waits for a newer one's units.
		return s, Result{}, nil
	case holds && h.Job == job:
		// The same job asks again (a restarted device): repeat the grant,
		// change nothing.
		return s, Result{Effects: []*messages.CellEffect{grantEffect(s.Cell, dev)}}, nil
	}
	// A new request, or a new job of a device the cell knows: cost it afresh.
	level := Classify(cfg, r.Rsrp, r.Sinr, r.GetCellOnly())
	cost := Cost(cfg, level)
	ev := &messages.CellEvent{AtUnixNano: at, Kind: &messages.CellEvent_PermitQueued{
		PermitQueued: &messages.PermitQueued{DeviceId: dev, Level: level, Cost: cost, TaskId: job.TaskID, Attempt: job.Attempt},
	}}
	res := Result{Events: []*messages.CellEvent{ev}}
	s = Evolve(s, ev)
	if holds && cost <= h.Cost {
		// A holder's new job needs no more units than it holds: it keeps
		// its slot at the new cost now, taking nothing from those waiting.
		s = grant(s, at, dev, &res)
	}
	s = admit(cfg, s, at, &res)
	return s, res, nil
}

func release(cfg Config, s State, at int64, dev string) (State, Result, error) {
	if _, ok := s.Slots[dev]; !ok && queued(s, dev) < 0 {
		return s, Result{}, nil // unknown device: nothing to give back
	}
	ev := &messages.CellEvent{AtUnixNano: at, Kind: &messages.CellEvent_PermitReturned{
		PermitReturned: &messages.PermitReturned{DeviceId: dev},
	}}
	res := Result{Events: []*messages.CellEvent{ev}}
	s = Evolve(s, ev)
	s = admit(cfg, s, at, &res)
	return s, res, nil
}

// fits reports whether the head of the queue may be admitted now: whether
// the units it needs beyond those it already holds (a holder's new job) fit.
// A cost above the budget (journaled under an older config) counts as the
// whole budget: that device is admitted when no one else holds units and
// upgrades alone.
func fits(cfg Config, s State) bool {
	h := s.Queue[0]
	need := uint64(min(h.Cost, cfg.Budget))
	have := uint64(s.Slots[h.DeviceID].Cost)
	return uint64(s.InUse)+need <= uint64(cfg.Budget)+have
}

// admit grants the head of the queue while it fits, strictly in order.
func admit(cfg Config, s State, at int64, res *Result) State {
	for len(s.Queue) > 0 && fits(cfg, s) {
		s = grant(s, at, s.Queue[0].DeviceID, res)
	}
	return s
}

// grant admits the waiting device dev: its event, applied, and its effect.
func grant(s State, at int64, dev string, res *Result) State {
	ev := &messages.CellEvent{AtUnixNano: at, Kind: &messages.CellEvent_PermitGranted{
		PermitGranted: &messages.PermitGrantedToDevice{DeviceId: dev},
	}}
	s = Evolve(s, ev)
	res.Events = append(res.Events, ev)
	res.Effects = append(res.Effects, grantEffect(s.Cell, dev))
	return s
}

// Admit grants every queue head that fits under cfg, as Step does after a
// request or release. The shell calls it after Resume: with an unchanged
// config it does nothing, but after the budget was raised across a restart
// it lets waiting devices in without waiting for the next release. Its
// events are journaled like a Step's; atUnixNano stamps them.
func Admit(cfg Config, s State, atUnixNano int64) (State, Result, error) {
	if err := cfg.Validate(); err != nil {
		return s, Result{}, err
	}
	if s.Cell == "" {
		return s, Result{}, fmt.Errorf("%w: build the state with New before Admit", ErrNoCell)
	}
	var res Result
	s = admit(cfg, s, atUnixNano, &res)
	return s, res, nil
}

func grantEffect(cell, dev string) *messages.CellEffect {
	return &messages.CellEffect{Kind: &messages.CellEffect_Grant{
		Grant: &messages.PermitGranted{CellId: cell, DeviceId: dev},
	}}
}

// queued returns dev's position in the queue, or -1.
func queued(s State, dev string) int {
	return slices.IndexFunc(s.Queue, func(w Waiter) bool { return w.DeviceID == dev })
}

// Evolve applies one journaled event to s and returns the new state. It is
// total: a nil or unknown event, or one that does not fit the state (a grant
// for a device that is not waiting, a queueing without device ID), leaves s
// unchanged. A queueing of a device that waits already replaces its request
// in its place; one of a holder adds it to the queue (a new job's request);
// a grant of a holder replaces its slot; a return drops the device's slot
// and its place in the queue. It may modify s's map and slice in place.
func Evolve(s State, e *messages.CellEvent) State {
	switch k := e.GetKind().(type) {
	case *messages.CellEvent_PermitQueued:
		q := k.PermitQueued
		if q.GetDeviceId() == "" {
			return s
		}
		w := Waiter{DeviceID: q.GetDeviceId(), Level: q.GetLevel(), Cost: q.GetCost(), Job: Job{TaskID: q.GetTaskId(), Attempt: q.GetAttempt()}}
		if i := queued(s, w.DeviceID); i >= 0 {
			s.Queue[i] = w
		} else {
			s.Queue = append(s.Queue, w)
		}
	case *messages.CellEvent_PermitGranted:
		i := queued(s, k.PermitGranted.GetDeviceId())
		if i < 0 {
			return s
		}
		w := s.Queue[i]
		s.Queue = slices.Delete(s.Queue, i, i+1)
		if s.Slots == nil {
			s.Slots = map[string]Slot{}
		}
		if h, ok := s.Slots[w.DeviceID]; ok {
			s.InUse -= min(h.Cost, s.InUse)
		}
		s.Slots[w.DeviceID] = Slot{Level: w.Level, Cost: w.Cost, Job: w.Job}
		s.InUse = satAdd(s.InUse, w.Cost)
	case *messages.CellEvent_PermitReturned:
		dev := k.PermitReturned.GetDeviceId()
		if h, ok := s.Slots[dev]; ok {
			delete(s.Slots, dev)
			s.InUse -= min(h.Cost, s.InUse)
		}
		if i := queued(s, dev); i >= 0 {
			s.Queue = slices.Delete(s.Queue, i, i+1)
		}
	}
	return s
}

func satAdd(a, b uint32) uint32 {
	if a+b < a {
		return ^uint32(0)
	}
	return a + b
}

// Resume returns the effects to run after s was rebuilt by replay: the grant
// of every holder again, in device-ID order, because a grant effect may have
// been lost in the crash; not that of a holder waiting for a new job's units,
// whose device waits for the grant of that job. Device actors ignore grants
// they do not wait for. Resume has no config, so it grants no one new: call
// Admit for that. A state without a cell ID yields nothing.
func Resume(s State) []*messages.CellEffect {
	if s.Cell == "" || len(s.Slots) == 0 {
		return nil
	}
	ids := make([]string, 0, len(s.Slots))
	for id := range s.Slots {
		if queued(s, id) < 0 {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	out := make([]*messages.CellEffect, 0, len(ids))
	for _, id := range ids {
		out = append(out, grantEffect(s.Cell, id))
	}
	return out
}
