package actors

import (
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"

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
	seed     maphash.Seed
	shards   [64]shard
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

// send delivers msg to the actor at a, spawning it if needed.
func (d *directory) send(a Address, msg any) { d.deliver(a, msg) }

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
