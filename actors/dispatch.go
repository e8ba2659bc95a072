package actors

import (
	"sync/atomic"

	"github.com/otafleet/otafleet/internal/stacks"
)

// poolDispatcher runs the actors' mailboxes (actor.Dispatcher) on goroutines
// that stay for the next mailbox instead of ending with each run, as
// protoactor's default dispatcher's do. A device step runs deep (the state
// machine, the journal), so a fresh goroutine grows and copies its stack on
// almost every run: in bench profiles that was 7-11% of the engine's CPU.
// A mailbox run goes to an idle worker when there is one; otherwise a new
// worker starts, up to max, and beyond that the run gets a goroutine of its
// own, so Schedule never waits and a run that blocks (on an fsync, say) never
// holds up another actor. Workers end when done is closed, and a worker
// that finds maxIdle others idle ends too.
//
// A worker grows its stack to stacks.Size (16 KiB, about what a device step
// needs: the state machine, the journal's append, a transport's send) at
// once when it starts, and an idle worker waits in park, whose frame holds
// stackBallast bytes: more than a quarter of the stack is then in use while
// it waits, so the garbage collector does not halve it, only for the next
// step to grow it again by copying (5% of the engine's CPU in MQTT and PCP
// bench profiles, most of it under devicefsm.Step, before the workers kept
// their stacks). The idle workers cost at most maxIdle × 16 KiB (1 MiB) of
// stacks. A run beyond max workers (many actors wait for the journal's
// fsync at once) grows its goroutine's stack at once too. (32 KiB stacks,
// which the runtime does not cache per P, cost more to allocate than the
// copies they saved.)
type poolDispatcher struct {
	work       chan func()
	done       <-chan struct{}
	workers    atomic.Int32
	idle       atomic.Int32
	max        int32
	maxIdle    int32
	throughput int
}

// dispatchWorkers bounds the goroutines poolDispatcher keeps, and
// dispatchIdle the idle ones among them; dispatchThroughput is how many
// messages a mailbox run handles before it yields (protoactor's default).
const (
	dispatchWorkers    = 256
	dispatchIdle       = 64
	dispatchThroughput = 300
)

func newPoolDispatcher(max, maxIdle, throughput int, done <-chan struct{}) *poolDispatcher {
	return &poolDispatcher{work: make(chan func()), done: done, max: int32(max), maxIdle: int32(maxIdle), throughput: throughput}
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
	go func() {
		stacks.Grow() // a run of its own is as deep as a worker's
		fn()
	}()
}

// Throughput implements actor.Dispatcher.
func (d *poolDispatcher) Throughput() int { return d.throughput }

func (d *poolDispatcher) worker(fn func()) {
	defer d.workers.Add(-1)
	stacks.Grow()
	for {
		fn()
		if d.idle.Add(1) > d.maxIdle {
			d.idle.Add(-1)
			return
		}
		var ok bool
		fn, ok = d.park()
		d.idle.Add(-1)
		if !ok {
			return
		}
	}
}

// stackBallast is the size of park's frame: over a quarter of the 16 KiB
// stack a worker grows to.
const stackBallast = 4<<10 + 256

// park waits for the next run, with a frame of stackBallast bytes; false
// once done is closed.
//
//go:noinline
func (d *poolDispatcher) park() (func(), bool) {
	var ballast [stackBallast]byte
	var fn func()
	ok := true
	select {
	case fn = <-d.work:
	case <-d.done:
		ok = false
	}
	keepBallast(&ballast) // live across the wait, so the frame keeps it
	return fn, ok
}

//go:noinline
func keepBallast(b *[stackBallast]byte) { b[0] = 0 }
