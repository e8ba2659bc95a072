package actors

import (
	"context"
	"errors"
	"maps"
	"net"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
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

// ClusterAddr is the engine's cluster address ("" on a single node).
func (e *Engine) ClusterAddr() string {
	if e.node == nil {
		return ""
	}
	return e.node.me()
}

// ClusterTraffic returns the inputs the node sent to each peer and
// received from each.
func (e *Engine) ClusterTraffic() (sentTo, recvFrom map[string]int64) {
	n := e.node
	n.trafficMu.Lock()
	defer n.trafficMu.Unlock()
	return maps.Clone(n.sentTo), maps.Clone(n.recvFrom)
}

// ClusterSettled reports whether the node has k members and reconciled
// its last membership change, and returns a channel closed at its next
// change.
func (e *Engine) ClusterSettled(k int) (bool, <-chan struct{}) {
	ok, tick := e.node.settled()
	return ok && e.node.memberCount() == k, tick
}

// Crashable makes a clustered engine (before Start) one that Crash can
// kill abruptly: its etcd connections go through a dialer that Crash
// severs and that refuses new ones from then on.
func (e *Engine) Crashable() {
	c := &severable{}
	e.node.etcdDial = c.dial
	crashers.Store(e, c)
}

// crashers are the Crashable engines' dialers.
var crashers sync.Map // *Engine -> *severable

type severable struct {
	mu     sync.Mutex
	dead   bool
	conns  []net.Conn
	dialer net.Dialer
}

func (s *severable) dial(ctx context.Context, addr string) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return nil, errors.New("crashed")
	}
	c, err := s.dialer.DialContext(ctx, "tcp", strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "unix://"))
	if err == nil {
		s.conns = append(s.conns, c)
	}
	return c, err
}

// heal lets the node dial etcd again.
func (s *severable) heal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dead = false
}

func (s *severable) sever() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dead = true
	for _, c := range s.conns {
		c.Close()
	}
}

// Crash kills the node as a crash would: it drops out of etcd without
// deregistering (the others see it go when its lease expires), its actors
// stop where they are and its remote closes, with nothing handed over.
func (e *Engine) Crash() {
	c, _ := crashers.Load(e)
	c.(*severable).sever()
	e.stopOnce.Do(func() {
		close(e.stopped)
		e.dir.stopAll()
		e.system.Shutdown()
		e.node.c.Remote.Shutdown(false)
	})
}

// Partition cuts a Crashable node off from etcd (and only from etcd) until
// the returned heal is called.
func (e *Engine) Partition() (heal func()) {
	c, _ := crashers.Load(e)
	c.(*severable).sever()
	return c.(*severable).heal
}

// SendCell delivers in to cell cellID's actor, as a device's effect does.
func (e *Engine) SendCell(cellID string, in *messages.CellInput) {
	e.dir.send(Address{Kind: persistence.KindCell, ID: cellID}, in)
}

// SendTask delivers in to task taskID's actor, as a device's effect does.
func (e *Engine) SendTask(taskID string, in *messages.TaskInput) {
	e.dir.send(Address{Kind: persistence.KindTask, ID: taskID}, in)
}

// Owner is the cluster address of the node that owns actor (kind, id) by
// this node's view of the members.
func (e *Engine) Owner(kind persistence.Kind, id string) string {
	o, _ := e.node.owner(Address{Kind: kind, ID: id})
	return o
}

// DropRoutedTo makes the node drop every input it sends to node addr from
// now on, as the network does to what is in flight to a node that dies;
// it returns how many it dropped so far.
func (e *Engine) DropRoutedTo(addr string) (dropped func() int64) {
	e.node.dropTo.Store(&addr)
	return e.node.dropped.Load
}

// HoldTopology keeps the node's view of the members as it is (the
// topologies protoactor publishes wait) until release, which applies the
// last one held.
func (e *Engine) HoldTopology() (release func()) {
	n := e.node
	n.holdMu.Lock()
	n.holding = true
	n.holdMu.Unlock()
	return func() {
		n.holdMu.Lock()
		n.holding = false
		t := n.held
		n.held = nil
		n.holdMu.Unlock()
		if t != nil {
			n.update(t)
		}
	}
}

// PassedAgain counts the inputs the node's directory had passed on to a
// node that then left, and sent again to their new owners.
func (e *Engine) PassedAgain() int64 { return e.node.passedAgain.Load() }

// AwaitingReplies is the number of requests to other nodes waiting for
// their reply.
func (e *Engine) AwaitingReplies() int64 { return e.node.awaiting.Load() }

// NoAckTold is the number of no_ack reports the node told the node at addr
// and has not had credited yet.
func (e *Engine) NoAckTold(addr string) int {
	n := e.node
	n.noAckMu.Lock()
	defer n.noAckMu.Unlock()
	if p := n.noAckTold[addr]; p != nil {
		return p.told
	}
	return 0
}

// NoAckWaited counts the no_ack reports the node sent as requests because
// their owner's credit was spent.
func (e *Engine) NoAckWaited() int {
	var m dto.Metric
	if err := e.metrics.noAckWaited.Write(&m); err != nil {
		panic(err)
	}
	return int(m.GetCounter().GetValue())
}

// NoAckLimits are maxNoAckTold, creditEvery and noAckQuiet.
func NoAckLimits() (told, every int, quiet time.Duration) {
	return maxNoAckTold, creditEvery, noAckQuiet
}
