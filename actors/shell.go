package actors

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// machine adapts one pure state machine to the shell.
type machine interface {
	// eventType is the envelope type of the machine's events.
	eventType() uint32
	// apply folds one journaled event (replay).
	apply(payload []byte) error
	// restore loads a snapshot; snapshot encodes the current state.
	restore(snap persistence.Snapshot) error
	snapshot() (persistence.Snapshot, error)
	// step decides on an input: the new state is kept by commit, after the
	// events are durable; run carries out the effects afterwards.
	step(in proto.Message) (next any, events []proto.Message, effects []proto.Message, err error)
	commit(next any)
	// resume lists what to redo after recovery; events (if any) are
	// persisted like a step's before the effects run.
	resume() (next any, events []proto.Message, effects []proto.Message, err error)
	run(sh *shell, effects []proto.Message)
	// refused lists the effects of an input the actor refused (err: a
	// broken actor's, or the step's): for a command that starts a job, its
	// outcome, so that the job's owner does not wait for it forever.
	refused(in proto.Message, err error) []proto.Message
	// active: the stream's recovery mark; idle: the actor may passivate.
	active(next any) bool
	idle() bool
	view(q any) any
	// input wraps a fired deadline as this machine's input.
	deadline(step string, gen uint64) proto.Message
	// activated runs once the state is recovered; deactivated when the actor stops.
	activated()
	deactivated()
	// resend lists the effects that carry again, to the actors for which
	// lost holds, the idempotent requests and answers that the committed
	// state may still owe them: those of Resume that go to other actors
	// (never a deadline or a downlink). The shell runs them when members
	// left the cluster (peerLeft): what was in flight to a departed node
	// is lost.
	resend(lost func(Address) bool) []proto.Message
}

// unrecoverer is a machine that publishes state outside its actor (the
// device's job table entry): unrecovered withdraws it when the actor's
// recovery fails.
type unrecoverer interface{ unrecovered() }

// shell is the protoactor actor around a machine: recover, then for each
// input step, persist (one append, synced unless nothing waits on it: see
// persist), commit, run effects; a drafter's inputs from other actors share
// one append (see receiveInput).
type shell struct {
	e       *Engine
	addr    Address
	machine machine

	self    *actor.PID
	seq     uint64 // last journaled sequence number
	snapSeq uint64 // sequence number of the last snapshot
	// mark is the stream's active mark as the last append left it, when
	// marked (an append this actor made): an append writes the mark only
	// when it changes, not with every batch. Batches are atomic and kept in
	// order, so the stored mark is the one of the last batch a crash kept,
	// whatever it takes.
	mark, marked bool
	// broken is set when recovery failed for good (a corrupt journal) or a
	// write failed other than by the store's fault: the actor only reports
	// it (to commands, reports and queries) and refuses other inputs; after
	// a failed write it passivates, so that its successor rebuilds from
	// what is durable.
	broken error
	// down is set while the actor's state is not the store's because of the
	// store (see storeFault: a write whose outcome is unknown, or a
	// recovery that could not read): the actor recovers again after a
	// backoff (retry), until it succeeds; meanwhile commands, reports and
	// queries get down, and other inputs wait in stash, to be stepped in
	// order on the state recovered.
	down error
	// fenced is set when an append found that another activation of the
	// stream wrote it first (persistence.ErrConflict: in a cluster, the
	// same actor ran on two nodes for a moment). The actor stops: the
	// message at hand and every later one go back to the directory, for a
	// successor that recovers from the store (on whichever node owns the
	// actor then).
	fenced  error
	stash   []any
	backoff time.Duration
	retry   clock.Timer

	deadline  clock.Timer
	passivate clock.Timer
	passGen   uint64

	// ownTopo is the cluster topology (node.topo) that owns was computed
	// for: whether this node owns the actor.
	ownTopo uint64
	owns    bool

	// batch holds the steps of inputs of other actors that a drafter
	// machine took and whose events are not journaled yet (see
	// receiveInput): they are appended together, in one batch, when the
	// actor's mailbox reaches the flushBatch it sent itself, or before it
	// handles any other message. Their effects wait for that append.
	batch batch
}

// ownedHere reports whether this node owns the actor (always on a single
// node); it recomputes only when the membership changed.
func (sh *shell) ownedHere() bool {
	n := sh.e.node
	if n == nil {
		return true
	}
	if t := n.topo.Load(); t != sh.ownTopo || t == 0 {
		sh.ownTopo = t
		_, sh.owns = n.owner(sh.addr)
	}
	return sh.owns
}

// batch is a shell's run of steps awaiting their one append.
type batch struct {
	inputs  []proto.Message // stashed again if the store fails the append
	events  []proto.Message
	effects []proto.Message
	next    any  // the state after the last step
	queued  bool // a flushBatch is on its way (counted in flight)
}

// drafter is a machine whose inputs from other actors may share one append
// (issue 21: a cell's queue-and-grant of many devices is one write, not one
// each). draft makes its next step start from next, a state not committed
// yet; commit ends the draft.
type drafter interface{ draft(next any) }

// flushBatch tells an actor to append the steps it batched and act on them.
type flushBatch struct{}

// retryRecovery asks an actor whose store was unavailable to recover again.
type retryRecovery struct{}

// The backoff between recovery attempts while the store is unavailable
// (clock time): it doubles from retryFirst up to retryMax.
const (
	retryFirst = 100 * time.Millisecond
	retryMax   = 5 * time.Second
)

// storeFault reports whether err is the store's, not the data's: the
// store is unavailable (the outcome of a failed append is unknown). The
// actor's state is rebuilt from the store and its input tried again;
// nothing else (a corrupt entry, say) is retried. Another writer of the
// stream (persistence.ErrConflict) fences the actor instead (see fenced).
func storeFault(err error) bool {
	return errors.Is(err, persistence.ErrUnavailable)
}

// requeue hands the message at hand of a fenced actor back to the
// directory, for its successor; it reports whether the message was one
// (lifecycle messages are not).
func (sh *shell) requeue(ctx actor.Context) bool {
	switch msg := ctx.Message().(type) {
	case command, query, taskQuery:
		sh.e.dir.requeue(sh.addr, sh.self, forwardRequest{msg: msg, reply: ctx.Sender()})
	case report, activation, proto.Message:
		sh.e.dir.requeue(sh.addr, sh.self, msg)
	case passivateCheck, retryRecovery, peerLeft:
		// A peerLeft: the successor recovers, and its Resume sends.
	default:
		return false
	}
	return true
}

// passivateCheck asks an idle actor whether it may stop.
type passivateCheck struct{ gen uint64 }

func (sh *shell) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case activation, command, report, query, taskQuery, retryRecovery, peerLeft, proto.Message:
		defer sh.e.dir.done()
	}
	switch ctx.Message().(type) {
	case flushBatch:
		if sh.batch.queued {
			sh.batch.queued = false
			defer sh.e.dir.done()
		}
		sh.flush()
		return
	case *messages.CellInput, *messages.DeviceInput, *messages.TaskInput:
		// Batched with the steps before it (see receiveInput).
	default:
		if sh.batch.queued {
			sh.batch.queued = false
			sh.e.dir.done() // the flushBatch on its way finds nothing
		}
		sh.flush()
	}
	if sh.down != nil && sh.whileDown(ctx) {
		return
	}
	if sh.fenced != nil && sh.requeue(ctx) {
		return
	}
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		sh.self = ctx.Self()
		sh.e.metrics.alive.WithLabelValues(kindName(sh.addr.Kind)).Inc()
		sh.recover()
	case *actor.Stopping:
		sh.stopTimers()
		// Passivated while down (the Poison was queued before a write
		// failed): what waits goes to the successor.
		for _, m := range sh.stash {
			sh.e.dir.send(sh.addr, m)
		}
		sh.stash = nil
		return
	case *actor.Stopped:
		sh.machine.deactivated()
		sh.e.metrics.alive.WithLabelValues(kindName(sh.addr.Kind)).Dec()
		sh.e.dir.stopped(sh.addr, sh.self)
		if sh.e.deps.Deactivated != nil {
			sh.e.deps.Deactivated(sh.addr)
		}
		return
	case *actor.Restarting:
		sh.stopTimers()
		return
	case activation:
		// Recovery ran in Started; report how it went.
		if msg.report != nil {
			msg.report <- sh.broken
		}
	case passivateCheck:
		if msg.gen == sh.passGen && sh.machine.idle() {
			sh.e.dir.passivate(sh.addr, sh.self)
		}
		return
	case command:
		// Answered once the step's events are durable, before its effects
		// run: a task created for 30,000 devices starts their jobs after
		// its caller has its answer, not before (which took longer than a
		// caller waits on a loaded machine).
		answered := false
		err := sh.step(msg.in, true, func() {
			sh.schedulePassivation() // before the reply, so a caller that saw it sees the timer armed
			ctx.Respond(nil)
			answered = true
		})
		if answered || (sh.fenced != nil && sh.requeue(ctx)) {
			return
		}
		sh.schedulePassivation()
		if err != nil {
			ctx.Respond(err)
		} else {
			ctx.Respond(nil)
		}
		return
	case report:
		// Answered once the step's events are journaled (synced when the
		// device expects the report acknowledged, that is unless it is
		// marked no_ack), before its effects run: the device gets its
		// acknowledgement before any downlink the report caused, as it would
		// without the wait. An invalid report is answered nil (acknowledged:
		// sending it again cannot help); only a failed journal write or a
		// failed recovery is an error (the store's unavailability among
		// them: the device is not acknowledged, and sends it again).
		answered := false
		err := sh.step(msg.in, !msg.in.GetNoAck(), func() {
			sh.schedulePassivation()
			msg.answer(nil)
			answered = true
		})
		if answered || (sh.fenced != nil && sh.requeue(ctx)) {
			return
		}
		sh.schedulePassivation()
		if fail := cmp.Or(sh.broken, sh.down); fail != nil {
			msg.answer(fail)
			return
		}
		sh.e.log.Warn("input refused", "actor", sh.addr.String(), "error", err)
		msg.answer(nil)
		return
	case query, taskQuery:
		sh.schedulePassivation()
		if sh.broken != nil {
			ctx.Respond(sh.broken)
		} else {
			ctx.Respond(sh.machine.view(msg))
		}
		return
	case retryRecovery:
		return // recovered meanwhile
	case peerLeft:
		// Sends only: nothing is journaled, so the journal's order holds
		// (what it repeats was journaled before it was first sent).
		if sh.broken == nil {
			sh.machine.run(sh, sh.machine.resend(msg.lost))
		}
		return
	case proto.Message:
		sh.receiveInput(msg)
		if sh.fenced != nil {
			sh.requeue(ctx)
			return
		}
	default:
		return // lifecycle and system messages
	}
	sh.schedulePassivation()
	if !sh.ownedHere() {
		// In a cluster, an input reached this node while its view of the
		// members differed from the sender's, and woke an actor another
		// node owns: it stops, and what comes for it goes to the owner.
		sh.e.dir.passivate(sh.addr, sh.self)
	}
}

// receiveInput runs the input of another actor or a timer: refused if the
// actor is broken or the machine refuses it (its effects tell the sender,
// see machine.refused), or stashed to be stepped again when the store
// failed its write (down).
//
// A drafter machine's steps are batched: each step continues from the state
// of the one before, and all their events are appended in one batch (see
// flush), once the inputs already in the mailbox are stepped; only then
// does the state commit and the effects run, in order. So the rule holds
// (events journaled before their effects run), and a burst of inputs costs
// one write.
func (sh *shell) receiveInput(msg proto.Message) {
	if d, ok := sh.machine.(drafter); ok && sh.broken == nil && sh.down == nil {
		sh.batchInput(d, msg)
		return
	}
	if err := sh.input(msg); err != nil {
		if sh.fenced != nil {
			return // the caller requeues it
		}
		if sh.down != nil {
			sh.stash = append(sh.stash, msg)
			return
		}
		sh.e.log.Warn("input refused", "actor", sh.addr.String(), "error", err)
		sh.machine.run(sh, sh.machine.refused(msg, err))
	}
}

// batchInput steps msg on the drafted state and adds the step to the batch.
func (sh *shell) batchInput(d drafter, msg proto.Message) {
	stamp(msg, sh.e.deps.Clock.Now())
	next, events, effects, err := sh.machine.step(msg)
	if err != nil {
		// Refused: what it tells its sender comes after the batch's effects.
		sh.flush()
		sh.e.log.Warn("input refused", "actor", sh.addr.String(), "error", err)
		sh.machine.run(sh, sh.machine.refused(msg, err))
		return
	}
	b := &sh.batch
	b.inputs = append(b.inputs, msg)
	b.events = append(b.events, events...)
	b.effects = append(b.effects, effects...)
	b.next = next
	d.draft(next)
	if !b.queued {
		b.queued = true
		sh.e.dir.inflight.Add(1) // settle waits for the flush too
		sh.e.dir.root.Send(sh.self, flushBatch{})
	}
}

// flush appends the batch's events in one append (unsynced unless one of
// them must be durable first), then commits the last step's state and runs
// the steps' effects in order. If the store fails the append, the batch's
// inputs wait in stash for the recovery, as a single input's would; if
// another activation wrote the stream (fenced), they go to the successor;
// if the write fails otherwise, they are refused.
func (sh *shell) flush() {
	b := sh.batch
	if b.next == nil {
		return
	}
	sh.batch = batch{queued: b.queued}
	if sh.broken != nil || sh.down != nil {
		return // cannot happen: a failure ends the batch
	}
	if len(b.events) > 0 {
		if err := sh.persist(b.next, b.events, false); err != nil {
			if sh.down != nil {
				sh.stash = append(sh.stash, anys(b.inputs)...)
				return
			}
			if sh.fenced != nil {
				// Another activation wrote the stream: the batch's inputs
				// go to the successor, in order, before the message at hand
				// (which the caller requeues), as receiveInput's would.
				for _, in := range b.inputs {
					sh.e.dir.requeue(sh.addr, sh.self, in)
				}
				return
			}
			for _, in := range b.inputs { // refused, as receiveInput's would be
				sh.machine.run(sh, sh.machine.refused(in, err))
			}
			return
		}
	}
	sh.machine.commit(b.next)
	sh.maybeSnapshot()
	sh.machine.run(sh, b.effects)
	sh.schedulePassivation()
}

func anys(ms []proto.Message) []any {
	out := make([]any, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}

// whileDown handles a message while the actor cannot recover because the
// store is unavailable (down): it reports whether it did. Commands,
// reports and queries get the error at once (a device is not
// acknowledged, so it sends its report again; an API client gets a
// retryable error); an activation and the inputs of other actors and
// timers wait in stash for the recovery; a retryRecovery tries it again.
func (sh *shell) whileDown(ctx actor.Context) bool {
	switch msg := ctx.Message().(type) {
	case command, query, taskQuery:
		ctx.Respond(sh.down)
	case report:
		msg.answer(sh.down)
	case activation:
		sh.stash = append(sh.stash, msg)
	case proto.Message:
		sh.stash = append(sh.stash, msg)
	case retryRecovery:
		sh.recoverAgain()
	case peerLeft:
		// The recovery that ends this resumes, and sends what is owed.
	case passivateCheck:
		// A down actor does not passivate: its stash would be lost.
	default:
		return false
	}
	return true
}

// recoverAgain retries a recovery the store's unavailability failed, on a
// fresh machine (the failed attempt may have folded part of the state);
// once it succeeds, the stashed messages run in the order they came.
func (sh *shell) recoverAgain() {
	sh.machine = sh.e.machineFor(sh.addr)
	sh.seq, sh.snapSeq, sh.down, sh.marked = 0, 0, nil, false
	sh.recover()
	if sh.down != nil {
		return
	}
	sh.e.log.Debug("actor recovered once the store was back", "actor", sh.addr.String())
	sh.backoff = 0
	stash := sh.stash
	sh.stash = nil
	for i, m := range stash {
		if sh.down != nil {
			// A write failed again: the rest waits for the next attempt.
			sh.stash = append(sh.stash, stash[i:]...)
			return
		}
		switch m := m.(type) {
		case activation:
			if m.report != nil {
				m.report <- sh.broken
			}
		case proto.Message:
			sh.receiveInput(m)
		}
	}
	sh.schedulePassivation()
}

// scheduleRetry arms the timer of the next recovery attempt.
func (sh *shell) scheduleRetry() {
	sh.backoff = min(max(2*sh.backoff, retryFirst), retryMax)
	addr := sh.addr
	sh.retry = sh.e.deps.Clock.AfterFunc(sh.backoff, func() { sh.e.dir.sendIfLive(addr, retryRecovery{}) })
}

// recover rebuilds the state from the records of a keeper, or else from
// the snapshot and journal (converting a keeper's to records), then resumes.
// When the store is unavailable, the actor is down until a later attempt
// succeeds (see whileDown); any other failure breaks it for good.
func (sh *shell) recover() {
	ctx := context.Background()
	st := sh.addr.stream()
	k, keeps := sh.machine.(keeper)
	var kept bool // the state came from records
	var err error
	if keeps {
		var recs []persistence.Record
		err = sh.e.deps.Store.LoadRecords(ctx, st, func(r persistence.Record) error {
			recs = append(recs, r)
			return nil
		})
		if err == nil {
			kept, err = k.load(recs)
		}
		if err == nil && kept {
			// The records are those of the stream's last batch.
			sh.seq, err = sh.e.deps.Store.LastSeq(ctx, st)
			sh.snapSeq = sh.seq
		}
	}
	if err == nil && !kept {
		var snap persistence.Snapshot
		var ok bool
		snap, ok, err = sh.e.deps.Store.LoadSnapshot(ctx, st)
		if err == nil && ok {
			err = sh.machine.restore(snap)
			sh.seq, sh.snapSeq = snap.Seq, snap.Seq
		}
	}
	if err == nil {
		err = sh.e.deps.Store.Load(ctx, st, sh.seq, func(ev persistence.Event) error {
			if ev.Seq != sh.seq+1 {
				return &persistence.CorruptError{Key: persistence.EventKey(st, ev.Seq), Reason: fmt.Sprintf("expected sequence %d", sh.seq+1)}
			}
			if ev.Type != sh.machine.eventType() {
				return &persistence.CorruptError{Key: persistence.EventKey(st, ev.Seq), Reason: fmt.Sprintf("event type %d in a stream of type %d", ev.Type, sh.machine.eventType())}
			}
			if err := sh.machine.apply(ev.Payload); err != nil {
				return &persistence.CorruptError{Key: persistence.EventKey(st, ev.Seq), Reason: err.Error()}
			}
			sh.seq = ev.Seq
			return nil
		})
	}
	if err == nil && keeps && !kept {
		err = sh.convert(k)
	}
	if err != nil {
		if u, ok := sh.machine.(unrecoverer); ok {
			u.unrecovered()
		}
		if errors.Is(err, persistence.ErrUnavailable) {
			// The store logs its unavailability once; not every actor.
			sh.down = fmt.Errorf("actors: recovering %s: %w", sh.addr, err)
			sh.scheduleRetry()
			sh.e.log.Debug("actor cannot recover while the store is unavailable; it retries", "actor", sh.addr.String(), "retry_after", sh.backoff, "error", err)
			return
		}
		sh.broken = fmt.Errorf("actors: recovering %s: %w", sh.addr, err)
		sh.e.log.Error("actor cannot recover; it refuses all input", "actor", sh.addr.String(), "error", err)
		return
	}
	sh.machine.activated()
	if sh.e.deps.Activated != nil {
		sh.e.deps.Activated(sh.addr)
	}
	next, events, effects, err := sh.machine.resume()
	if err != nil {
		sh.e.log.Error("resume failed", "actor", sh.addr.String(), "error", err)
		return
	}
	if len(events) > 0 {
		if err := sh.persist(next, events, false); err != nil {
			return
		}
	}
	if next != nil {
		sh.machine.commit(next)
	}
	sh.machine.run(sh, effects)
}

// convert writes the whole state of a keeper recovered from a snapshot and
// events (a stream written before it kept records) as records, in one
// synced batch, so that later steps write only what they change. Nothing
// is written for a state that does not exist yet.
func (sh *shell) convert(k keeper) error {
	recs, err := k.all()
	if err != nil || len(recs) == 0 {
		return err
	}
	_, err = sh.e.deps.Store.Append(context.Background(), persistence.Append{Stream: sh.addr.stream(), Expected: sh.seq, Records: recs})
	if err != nil {
		return fmt.Errorf("writing the state as records: %w", err)
	}
	sh.e.log.Info("state converted from snapshot and journal to records", "actor", sh.addr.String(), "records", len(recs))
	return nil
}

// input runs one step of an input nobody waits for (another actor's message,
// a timer, presence, a note): decide, persist, commit, act.
func (sh *shell) input(in proto.Message) error { return sh.step(in, false, nil) }

// step is input. waited marks an input whose sender waits for its step to be
// durable (a device report the device expects acknowledged, an API command):
// its events are synced whatever their kind. A report marked no_ack (an
// answer to the server's own request, a non-confirmable notification) is
// waited for too, but not synced: nothing is acknowledged on its strength.
// durable, if set, runs once the step's events (if any) are journaled and
// committed, before the effects run. It does not run when the step fails.
func (sh *shell) step(in proto.Message, waited bool, durable func()) error {
	if sh.broken != nil {
		return sh.broken
	}
	stamp(in, sh.e.deps.Clock.Now())
	next, events, effects, err := sh.machine.step(in)
	if err != nil {
		return err
	}
	if len(events) > 0 {
		if err := sh.persist(next, events, waited); err != nil {
			return err
		}
	}
	sh.machine.commit(next)
	sh.maybeSnapshot()
	if durable != nil {
		durable()
	}
	sh.machine.run(sh, effects)
	return nil
}

// persist appends events in one batch (with the records of a keeper),
// synced when sync is set or one of the events must be durable before the
// step's effects run (mustSync); otherwise unsynced, durable with the next
// synced append of any actor. On failure the state is not committed and
// no effect runs; when the store failed it (see storeFault: its outcome may
// be unknown) the actor is down and recovers again, else it stops so that
// its successor rebuilds from what is durable.
func (sh *shell) persist(next any, events []proto.Message, sync bool) error {
	evs := make([]persistence.Event, len(events))
	for i, ev := range events {
		b, err := proto.Marshal(ev)
		if err != nil {
			return fmt.Errorf("actors: encoding event of %s: %w", sh.addr, err)
		}
		evs[i] = persistence.Event{Type: sh.machine.eventType(), Version: 1, At: eventTime(ev), Payload: b}
	}
	var recs []persistence.Record
	if k, ok := sh.machine.(keeper); ok {
		var err error
		if recs, err = k.records(next, events); err != nil {
			return fmt.Errorf("actors: encoding the records of %s: %w", sh.addr, err)
		}
	}
	var mark *bool
	if active := sh.machine.active(next); !sh.marked || active != sh.mark {
		mark = &active
	}
	sync = sync || mustSync(events)
	start := sh.e.deps.Clock.Now()
	seq, err := sh.e.deps.Store.Append(context.Background(), persistence.Append{
		Stream: sh.addr.stream(), Expected: sh.seq, Events: evs, Records: recs, Active: mark, NoSync: !sync,
	})
	if sync {
		sh.e.metrics.commit.Observe(sh.e.deps.Clock.Since(start).Seconds())
	}
	if err != nil && errors.Is(err, persistence.ErrConflict) {
		sh.fence(err)
		return sh.fenced
	}
	if err != nil && storeFault(err) {
		// The state may lag the store's (the append may have been
		// written): recover it again once the store answers.
		sh.down = fmt.Errorf("actors: journal write of %s failed: %w", sh.addr, err)
		sh.machine.deactivated()
		sh.machine = sh.e.machineFor(sh.addr) // as a successor's, until it recovers
		if sh.deadline != nil {
			sh.deadline.Stop() // Resume re-arms it
		}
		sh.scheduleRetry()
		// The store logs its unavailability once; not every actor.
		sh.e.log.Debug("journal write failed by the store's fault; the actor recovers again", "actor", sh.addr.String(), "retry_after", sh.backoff, "error", err)
		return sh.down
	}
	if err != nil {
		sh.broken = fmt.Errorf("actors: journal write of %s failed: %w", sh.addr, err)
		sh.e.log.Error("journal write failed; the actor restarts from its journal", "actor", sh.addr.String(), "error", err)
		sh.e.dir.passivate(sh.addr, sh.self)
		return sh.broken
	}
	sh.seq = seq
	if mark != nil {
		sh.mark, sh.marked = *mark, true
	}
	sh.e.metrics.appended.WithLabelValues(kindName(sh.addr.Kind)).Add(float64(len(evs)))
	return nil
}

// fence stops an actor whose stream another activation wrote (see
// fenced): no effect of the failed step runs, its timers stop, and it
// passivates; what it is sent from now on waits for its successor.
func (sh *shell) fence(err error) {
	sh.fenced = fmt.Errorf("actors: %s was written by another activation; this one stops: %w", sh.addr, err)
	sh.stopTimers()
	sh.e.metrics.fenced.WithLabelValues(kindName(sh.addr.Kind)).Inc()
	sh.e.log.Info("actor fenced: another activation wrote its stream; it stops and its successor recovers from the store", "actor", sh.addr.String())
	sh.e.dir.passivate(sh.addr, sh.self)
}

// mustSync reports whether one of a step's events must be durable before the
// step's effects run: the rules of messages' MustSync methods, one per event
// kind.
func mustSync(events []proto.Message) bool {
	for _, ev := range events {
		if s, ok := ev.(interface{ MustSync() bool }); !ok || s.MustSync() {
			return true
		}
	}
	return false
}

func (sh *shell) maybeSnapshot() {
	every := sh.e.cfg.SnapshotEvery
	if _, keeps := sh.machine.(keeper); keeps || every < 0 || sh.seq-sh.snapSeq < uint64(every) {
		return
	}
	snap, err := sh.machine.snapshot()
	if errors.Is(err, errNoSnapshot) {
		return
	}
	if err == nil {
		snap.Seq = sh.seq
		err = sh.e.deps.Store.SaveSnapshot(context.Background(), sh.addr.stream(), snap)
	}
	if err != nil {
		level := slog.LevelWarn
		if errors.Is(err, persistence.ErrUnavailable) {
			level = slog.LevelDebug // the store logs its unavailability once
		}
		sh.e.log.Log(context.Background(), level, "snapshot failed; replay stays longer", "actor", sh.addr.String(), "error", err)
		return
	}
	sh.snapSeq = sh.seq
}

// errNoSnapshot: the machine has no snapshot encoding (replay only).
var errNoSnapshot = errors.New("actors: no snapshot encoding")

// armDeadline replaces the actor's deadline timer.
func (sh *shell) armDeadline(a *messages.ArmDeadline) {
	if sh.deadline != nil {
		sh.deadline.Stop()
	}
	d := messages.Time(a.GetAtUnixNano()).Sub(sh.e.deps.Clock.Now())
	in := sh.machine.deadline(a.GetStep(), a.GetGeneration())
	addr := sh.addr
	sh.deadline = sh.e.deps.Clock.AfterFunc(max(d, 0), func() { sh.e.dir.send(addr, in) })
}

func (sh *shell) schedulePassivation() {
	if !sh.machine.idle() || sh.broken != nil || sh.down != nil {
		return
	}
	sh.passGen++
	if sh.passivate != nil {
		sh.passivate.Stop()
	}
	gen, pid, root := sh.passGen, sh.self, sh.e.system.Root
	sh.passivate = sh.e.deps.Clock.AfterFunc(sh.e.cfg.PassivateAfter, func() {
		if !sh.e.dir.closed.Load() {
			root.Send(pid, passivateCheck{gen: gen})
		}
	})
}

func (sh *shell) stopTimers() {
	if sh.deadline != nil {
		sh.deadline.Stop()
	}
	if sh.passivate != nil {
		sh.passivate.Stop()
	}
	if sh.retry != nil {
		sh.retry.Stop()
	}
}

// stamp sets an input's time when its sender left it out.
func stamp(in proto.Message, now time.Time) {
	ns := messages.UnixNano(now)
	switch m := in.(type) {
	case *messages.DeviceInput:
		if m.AtUnixNano == 0 {
			m.AtUnixNano = ns
		}
	case *messages.CellInput:
		if m.AtUnixNano == 0 {
			m.AtUnixNano = ns
		}
	case *messages.TaskInput:
		if m.AtUnixNano == 0 {
			m.AtUnixNano = ns
		}
	}
}

func eventTime(ev proto.Message) int64 {
	switch m := ev.(type) {
	case *messages.DeviceEvent:
		return m.GetAtUnixNano()
	case *messages.CellEvent:
		return m.GetAtUnixNano()
	case *messages.TaskEvent:
		return m.GetAtUnixNano()
	}
	return 0
}
