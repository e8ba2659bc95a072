package actors

import "sync/atomic"

// poolDispatcher runs the actors' mailboxes (actor.Dispatcher) on goroutines
// that stay for the next mailbox instead of ending with each run, as
// protoactor's default dispatcher's do. A device step runs deep (the state
// machine, the journal), so a fresh goroutine grows and copies its stack on
// almost every run: in bench profiles that was 7-11% of the engine's CPU.
// A mailbox run goes to an idle worker when there is one; otherwise a new
// worker starts, up to max, and beyond that the run gets a goroutine of its
// own, so Schedule never waits and a run that blocks (on an fsync, say) never
// holds up another actor. Workers end when done is closed.
type poolDispatcher struct {
	work       chan func()
	done       <-chan struct{}
	workers    atomic.Int32
	max        int32
	throughput int
}

// dispatchWorkers bounds the goroutines poolDispatcher keeps; dispatchThroughput
// is how many messages a mailbox run handles before it yields (protoactor's
// default).
const (
	dispatchWorkers    = 256
	dispatchThroughput = 300
)

func newPoolDispatcher(max, throughput int, done <-chan struct{}) *poolDispatcher {
	return &poolDispatcher{work: make(chan func()), done: done, max: int32(max), throughput: throughput}
}

// Schedule implements actor.Dispatcher.
func (d *poolDispatcher) Schedule(fn func()) {
	select {
	case d.work <- fn: // an idle worker took it
		return
	default:
	}
	if d.workers.Add(1) <= d.max {
		go d.worker(fn)
		return
	}
	d.workers.Add(-1)
	go fn()
}

// Throughput implements actor.Dispatcher.
func (d *poolDispatcher) Throughput() int { return d.throughput }

func (d *poolDispatcher) worker(fn func()) {
	defer d.workers.Add(-1)
	for {
		fn()
		select {
		case fn = <-d.work:
		case <-d.done:
			return
		}
	}
}
