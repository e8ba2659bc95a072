package actors

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// Address is an actor's identity: its kind and ID. It is the only way to
// reach an actor; the directory maps it to a live process, spawning one (and
// so recovering it from its journal) on demand. In a cluster this is the one
// place that changes: addresses become grain identities.
type Address struct {
	Kind persistence.Kind
	ID   string
}

func (a Address) stream() persistence.Stream { return persistence.Stream{Kind: a.Kind, ID: a.ID} }

func (a Address) String() string { return string(a.Kind) + "/" + a.ID }

// directory keeps at most one live actor per address. Sends are enqueued into
// the actor's mailbox while the shard lock is held, and passivation enqueues
// its Poison under the same lock after marking the entry stopping; so every
// message either reaches the old actor before its Poison or waits in pending
// and goes to its successor, which is spawned only after the old one stopped.
// No message is lost and no two actors ever run for one address.
type directory struct {
	closed atomic.Bool
	// inflight counts user messages sent to actors and not yet handled;
	// settle waits for it to reach zero.
	inflight atomic.Int64
	idleMu   sync.Mutex
	idle     *sync.Cond
	root     *actor.RootContext
	spawn    func(Address) *actor.Props
	// cl is the engine's cluster node (nil on a single node): send hands
	// an input for an actor another node owns to that node.
	cl     *node
	seed   maphash.Seed
	shards [64]shard
}

type shard struct {
	mu   sync.Mutex
	live map[Address]*entry
}

type entry struct {
	pid      *actor.PID
	stopping bool
	pending  []any
}

func newDirectory(root *actor.RootContext, spawn func(Address) *actor.Props) *directory {
	d := &directory{root: root, spawn: spawn, seed: maphash.MakeSeed()}
	d.idle = sync.NewCond(&d.idleMu)
	for i := range d.shards {
		d.shards[i].live = map[Address]*entry{}
	}
	return d
}

func (d *directory) shard(a Address) *shard {
	var h maphash.Hash
	h.SetSeed(d.seed)
	h.WriteString(string(a.Kind))
	h.WriteString(a.ID)
	return &d.shards[h.Sum64()%uint64(len(d.shards))]
}

// send delivers msg to the actor at a, spawning it if needed; in a
// cluster, an input (a protobuf message) for an actor another node owns
// goes to that node.
func (d *directory) send(a Address, msg any) {
	if d.cl != nil {
		if pm, ok := msg.(proto.Message); ok {
			if owner, local := d.cl.owner(a); !local {
				if !d.closed.Load() {
					d.cl.tell(owner, a, pm, false, 0)
				}
				return
			}
		}
	}
	d.deliver(a, msg)
}

// deliverLocal delivers msg to this node's actor at a, whoever owns it.
func (d *directory) deliverLocal(a Address, msg any) { d.deliver(a, msg) }

// activation wakes an actor (which recovers when it starts) and, when report
// is set, receives the outcome of its recovery: nil, or why it cannot run.
type activation struct{ report chan<- error }

// done marks one user message handled.
func (d *directory) done() {
	if d.inflight.Add(-1) == 0 {
		d.idleMu.Lock()
		d.idle.Broadcast()
		d.idleMu.Unlock()
	}
}

// settle waits until no message is in flight.
func (d *directory) settle() {
	d.idleMu.Lock()
	for d.inflight.Load() > 0 {
		d.idle.Wait()
	}
	d.idleMu.Unlock()
}

func (d *directory) deliver(a Address, msg any) {
	if d.closed.Load() {
		return
	}
	s := d.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	d.inflight.Add(1)
	e := s.live[a]
	switch {
	case e == nil:
		e = &entry{pid: d.root.Spawn(d.spawn(a))}
		s.live[a] = e
	case e.stopping:
		e.pending = append(e.pending, msg)
		return
	}
	d.root.Send(e.pid, msg)
}

// sendIfLive delivers msg to the actor at a only if one is live (or stopping,
// when msg waits for its successor as send's would); it reports whether it
// did. It never spawns an actor.
func (d *directory) sendIfLive(a Address, msg any) bool {
	if d.closed.Load() {
		return false
	}
	s := d.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.live[a]
	if e == nil {
		return false
	}
	d.inflight.Add(1)
	if e.stopping {
		e.pending = append(e.pending, msg)
		return true
	}
	d.root.Send(e.pid, msg)
	return true
}

// request sends msg with a reply future.
func (d *directory) request(a Address, msg any, wait func(*actor.PID) *actor.Future) *actor.Future {
	s := d.shard(a)
	s.mu.Lock()
	d.inflight.Add(1)
	e := s.live[a]
	if e == nil {
		e = &entry{pid: d.root.Spawn(d.spawn(a))}
		s.live[a] = e
	}
	if e.stopping {
		// Rare: the actor is passivating. Queue a forwarder that asks its successor.
		f := actor.NewFuture(d.root.ActorSystem(), requestTimeout)
		e.pending = append(e.pending, forwardRequest{msg: msg, reply: f.PID()})
		s.mu.Unlock()
		return f
	}
	f := wait(e.pid)
	s.mu.Unlock()
	return f
}

// forwardRequest is a request that waited for a passivating actor's successor.
type forwardRequest struct {
	msg   any
	reply *actor.PID
}

// passivate begins stopping the actor at a if pid is still its live process.
// Messages sent from now on wait for the successor.
func (d *directory) passivate(a Address, pid *actor.PID) bool {
	s := d.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.live[a]
	if e == nil || e.stopping || !e.pid.Equal(pid) {
		return false
	}
	e.stopping = true
	d.root.Poison(pid)
	return true
}

// stopped is called by an actor once it stopped: its entry goes, and what
// waited for it goes to a fresh actor.
func (d *directory) stopped(a Address, pid *actor.PID) {
	s := d.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.live[a]
	if e == nil || !e.pid.Equal(pid) {
		return
	}
	delete(s.live, a)
	if len(e.pending) == 0 {
		return
	}
	if d.cl != nil {
		if owner, local := d.cl.owner(a); !local {
			// The actor moved to another node: what waited goes there.
			for _, m := range e.pending {
				d.forward(owner, a, m)
			}
			return
		}
	}
	ne := &entry{pid: d.root.Spawn(d.spawn(a))}
	s.live[a] = ne
	for _, m := range e.pending {
		if fr, ok := m.(forwardRequest); ok {
			d.root.RequestWithCustomSender(ne.pid, fr.msg, fr.reply)
			continue
		}
		d.root.Send(ne.pid, m)
	}
}

// forward hands a message that waited for a passivating actor to the node
// that owns the actor now (directory.stopped), and marks it handled here.
func (d *directory) forward(owner string, a Address, m any) {
	defer d.done()
	n := d.cl
	switch m := m.(type) {
	case proto.Message:
		n.tell(owner, a, m, false, 0)
	case report:
		if m.done == nil {
			// A no_ack report another node told: told on, and counted
			// stepped for its sender (the new owner counts it for this node).
			n.tellNoAck(owner, a, m.in, true)
			m.answer(nil)
			return
		}
		in, done := m.in, m.done
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			defer cancel()
			r, err := n.request(ctx, owner, &messages.ClusterRequest{Kind: string(a.Kind), Id: a.ID,
				Request: &messages.ClusterRequest_Report{Report: in}})
			if err == nil {
				err = replyErr(r)
			}
			done <- err
		}()
	case forwardRequest:
		if req, ok := wireRequest(a, m.msg); ok {
			d.root.RequestWithCustomSender(actor.NewPID(owner, directoryActor), req, m.reply)
		}
	case activation:
		if m.report != nil {
			m.report <- nil // the owner recovers it
		}
	}
}

// passivateWhere begins stopping every live actor whose address moves
// (a cluster's membership changed); it returns how many.
func (d *directory) passivateWhere(moves func(Address) bool) int {
	n := 0
	for i := range d.shards {
		s := &d.shards[i]
		s.mu.Lock()
		for a, e := range s.live {
			if !e.stopping && moves(a) {
				e.stopping = true
				d.root.Poison(e.pid)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// broadcast sends msg to every live actor that is not stopping (a
// stopping one's successor recovers, and its Resume does the work); it
// returns how many.
func (d *directory) broadcast(msg any) int {
	if d.closed.Load() {
		return 0
	}
	n := 0
	for i := range d.shards {
		s := &d.shards[i]
		s.mu.Lock()
		for _, e := range s.live {
			if !e.stopping {
				d.inflight.Add(1)
				d.root.Send(e.pid, msg)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// isLive reports whether an actor runs (or stops) at a.
func (d *directory) isLive(a Address) bool {
	s := d.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live[a] != nil
}

// requeue puts a message the actor pid could not handle (it was fenced:
// another activation wrote its stream) back in the directory, for the
// successor: pid must be stopping (passivate). It counts as a new message.
func (d *directory) requeue(a Address, pid *actor.PID, msg any) {
	s := d.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	d.inflight.Add(1)
	e := s.live[a]
	switch {
	case e == nil:
		// Not expected (the actor is stopping, so its entry is there);
		// should it happen, the successor starts here.
		e = &entry{pid: d.root.Spawn(d.spawn(a))}
		s.live[a] = e
	case e.stopping:
		e.pending = append(e.pending, msg)
		return
	}
	if fr, ok := msg.(forwardRequest); ok {
		d.root.RequestWithCustomSender(e.pid, fr.msg, fr.reply)
		return
	}
	d.root.Send(e.pid, msg)
}

// stopAll refuses new deliveries, then stops every live actor and waits for each.
func (d *directory) stopAll() {
	d.closed.Store(true)
	var pids []*actor.PID
	for i := range d.shards {
		s := &d.shards[i]
		s.mu.Lock()
		for _, e := range s.live {
			e.stopping = true
			pids = append(pids, e.pid)
		}
		s.mu.Unlock()
	}
	for _, pid := range pids {
		_ = d.root.StopFuture(pid).Wait()
	}
}

// count returns the number of live actors per kind.
func (d *directory) count() map[persistence.Kind]int {
	n := map[persistence.Kind]int{}
	for i := range d.shards {
		s := &d.shards[i]
		s.mu.Lock()
		for a := range s.live {
			n[a.Kind]++
		}
		s.mu.Unlock()
	}
	return n
}
