package actors

import (
	"sync"
	"testing"
)

// TestPoolDispatcher: every scheduled run runs; runs that block do not hold
// up others, beyond the worker bound too; idle workers are reused rather
// than more started; Stop ends them.
func TestPoolDispatcher(t *testing.T) {
	done := make(chan struct{})
	d := newPoolDispatcher(4, 4, 300, done)
	if d.Throughput() != 300 {
		t.Fatalf("throughput %d", d.Throughput())
	}

	// Ten runs that block until all ten have started: with 4 workers, six
	// must get goroutines of their own, or this never ends.
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(10)
	var ran sync.WaitGroup
	ran.Add(10)
	for range 10 {
		d.Schedule(func() {
			started.Done()
			<-release
			ran.Done()
		})
	}
	started.Wait()
	if n := d.workers.Load(); n != 4 {
		t.Fatalf("%d workers, want the bound, 4", n)
	}
	close(release)
	ran.Wait()

	// Once idle, the workers take the next runs: no worker is added.
	for range 100 {
		var one sync.WaitGroup
		one.Add(1)
		d.Schedule(one.Done)
		one.Wait()
	}
	if n := d.workers.Load(); n > 4 {
		t.Fatalf("%d workers after sequential runs, want at most 4", n)
	}

	close(done)
	// After Stop, runs still run (on a worker that then ends).
	var after sync.WaitGroup
	after.Add(1)
	d.Schedule(after.Done)
	after.Wait()
}
