package actors_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
)

// The engine benchmarks run on a Pebble store in b.TempDir() (the real
// filesystem, so every append is fsynced) with the fake clock, which moves
// only when a benchmark advances it: passivation happens exactly when asked.
//
//	go test ./actors -run '^$' -bench . -benchtime 1x

// benchSenders is how many goroutines deliver inputs or ask queries at once.
const benchSenders = 8

// openBenchStore opens a Pebble store in a temporary directory, closed when
// the benchmark ends (after its engine, registered later, has stopped).
func openBenchStore(b *testing.B) *pebblestore.Store {
	b.Helper()
	s, err := pebblestore.Open(b.TempDir(), pebblestore.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	})
	return s
}

// newBenchEngine builds and starts an engine over store, stopped when the
// benchmark ends. deps supplies the hooks; store, clock and transport are set here.
func newBenchEngine(b *testing.B, store persistence.EventStore, clk *clocktest.Clock, cfg actors.Config, deps actors.Deps) *actors.Engine {
	b.Helper()
	deps.Store, deps.Clock, deps.Transport = store, clk, nullTransport{}
	e, err := actors.New(cfg, deps)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Stop)
	if err := e.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	return e
}

func benchDeviceIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%06d", i)
	}
	return ids
}

// benchToggle is the r-th input of a device's toggle sequence (abnormal on, off,
// on, ...): starting from a fresh device, each one journals exactly one event.
func benchToggle(r int) *messages.DeviceInput {
	return &messages.DeviceInput{Kind: &messages.DeviceInput_SetAbnormal{SetAbnormal: &messages.SetAbnormal{Abnormal: r%2 == 0}}}
}

// benchDeliverToggles sends perDevice(d) toggles to every device, the first
// turning abnormal on: on a device that is not abnormal, each journals one
// event. Each device is fed by one sender only, so its inputs arrive in
// order; senders go round-robin over their devices so that many actors have
// work at once.
func benchDeliverToggles(b *testing.B, e *actors.Engine, ids []string, perDevice func(d int) int) {
	b.Helper()
	ctx := context.Background()
	senders := min(len(ids), benchSenders)
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			most := 0
			for d := g; d < len(ids); d += senders {
				most = max(most, perDevice(d))
			}
			for r := range most {
				for d := g; d < len(ids); d += senders {
					if r >= perDevice(d) {
						continue
					}
					if err := e.Deliver(ctx, ids[d], benchToggle(r)); err != nil {
						b.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

// benchQueryAll asks every device's actor for its state (activating it if
// passivated) from benchSenders goroutines at once.
func benchQueryAll(b *testing.B, e *actors.Engine, ids []string) {
	b.Helper()
	ctx := context.Background()
	senders := min(len(ids), benchSenders)
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for d := g; d < len(ids); d += senders {
				if _, err := e.Device(ctx, ids[d]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// benchJournaled sums the last sequence numbers of the devices' streams.
func benchJournaled(b *testing.B, store persistence.EventStore, ids []string) int {
	b.Helper()
	total := 0
	for _, id := range ids {
		seq, err := store.LastSeq(context.Background(), persistence.Stream{Kind: persistence.KindDevice, ID: id})
		if err != nil {
			b.Fatal(err)
		}
		total += int(seq)
	}
	return total
}

// benchCounter counts callbacks (Activated, Deactivated) and lets a benchmark
// wait until a number of them has happened, without polling.
type benchCounter struct {
	mu   sync.Mutex
	cond sync.Cond
	n    int
}

func newBenchCounter() *benchCounter {
	c := &benchCounter{}
	c.cond.L = &c.mu
	return c
}

func (c *benchCounter) add(actors.Address) {
	c.mu.Lock()
	c.n++
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *benchCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// waitFor blocks until the count reaches n.
func (c *benchCounter) waitFor(n int) {
	c.mu.Lock()
	for c.n < n {
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// benchPassivateAll advances the fake clock past PassivateAfter and waits until
// want actors in all have stopped; no device actor may then be alive.
func benchPassivateAll(b *testing.B, e *actors.Engine, clk *clocktest.Clock, cfg actors.Config, stopped *benchCounter, want int) {
	b.Helper()
	clk.Advance(cfg.PassivateAfter + time.Second)
	stopped.waitFor(want)
	if n := e.Live()["device"]; n != 0 {
		b.Fatalf("%d device actors alive after passivation", n)
	}
}

// BenchmarkEngineEventsSynced measures events journaled per second through
// the engine: inputs that each produce exactly one event (SetAbnormal
// toggles), delivered from up to 8 goroutines, every event in a synced
// append (plus a synced snapshot every 200 events per device, the default).
// With one device the appends are strictly sequential (one fsync each); with
// 1,000 the actors' appends share group commits.
func BenchmarkEngineEventsSynced(b *testing.B) {
	for _, devices := range []int{1, 1000} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) {
			store := openBenchStore(b)
			clk := clocktest.New(epoch)
			e := newBenchEngine(b, store, clk, actors.Config{}, actors.Deps{})
			ids := benchDeviceIDs(devices)
			benchQueryAll(b, e, ids) // activate them all: the timed part journals only
			e.Settle()
			perDevice := func(d int) int {
				n := b.N / devices
				if d < b.N%devices {
					n++
				}
				return n
			}
			b.ResetTimer()
			benchDeliverToggles(b, e, ids, perDevice)
			e.Settle()
			b.StopTimer()
			if got := benchJournaled(b, store, ids); got != b.N {
				b.Fatalf("%d events journaled, want %d", got, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkDeviceActivation measures device actor activations per second: a
// query to a passivated device spawns its actor, which loads its snapshot
// (none) and replays its journal of 20 events before it answers. 1,000
// devices are activated in rounds (8 queries at once); between rounds, with
// the timer stopped, the fake clock passivates them again.
func BenchmarkDeviceActivation(b *testing.B) {
	const devices, eventsEach = 1000, 20
	store := openBenchStore(b)
	clk := clocktest.New(epoch)
	activated, stopped := newBenchCounter(), newBenchCounter()
	cfg := actors.Config{PassivateAfter: time.Minute}
	e := newBenchEngine(b, store, clk, cfg, actors.Deps{Activated: activated.add, Deactivated: stopped.add})
	ids := benchDeviceIDs(devices)
	benchDeliverToggles(b, e, ids, func(int) int { return eventsEach })
	e.Settle()
	if got := benchJournaled(b, store, ids); got != devices*eventsEach {
		b.Fatalf("%d events journaled, want %d", got, devices*eventsEach)
	}
	benchPassivateAll(b, e, clk, cfg, stopped, devices)
	before := activated.count()

	b.ResetTimer()
	for done := 0; done < b.N; {
		batch := min(devices, b.N-done)
		benchQueryAll(b, e, ids[:batch])
		done += batch
		if done < b.N {
			b.StopTimer()
			benchPassivateAll(b, e, clk, cfg, stopped, stopped.count()+batch)
			b.StartTimer()
		}
	}
	b.StopTimer()
	if got := activated.count() - before; got != b.N {
		b.Fatalf("%d activations, want %d", got, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "activations/s")
}

// idleHeap holds BenchmarkIdleDeviceHeap's figures: the measurement is too
// slow to repeat, so it runs once per process whatever b.N (and -count).
var idleHeap struct {
	once                        sync.Once
	idle, later, live, registry float64
}

// BenchmarkIdleDeviceHeap measures the Go heap per registered device at
// 100,000 devices: registered in the Pebble registry, activated once (a
// Connected input, one journaled event each) and passivated. Reported, each
// as the heap minus a baseline taken after the store was opened and the
// engine built, divided by 100,000:
//   - heap-B/device: once every actor has reported its deactivation;
//   - live-heap-B/device: while all 100,000 actors are alive;
//   - registry-heap-B/device: after registration alone;
//   - later-heap-B/device: after one more PassivateAfter of clock time, when
//     every timer the actors armed has fired (a timer left armed keeps its
//     actor reachable until then).
//
// Pebble's block cache and memtables are allocated outside the Go heap (cgo)
// and are not counted. The benchmark timer is stopped throughout: only these
// metrics mean anything.
func BenchmarkIdleDeviceHeap(b *testing.B) {
	if testing.Short() {
		b.Skip("registers and activates 100,000 devices")
	}
	b.StopTimer()
	idleHeap.once.Do(func() { measureIdleHeap(b) })
	if b.Failed() {
		return
	}
	b.ReportMetric(idleHeap.live, "live-heap-B/device")
	b.ReportMetric(idleHeap.idle, "heap-B/device")
	b.ReportMetric(idleHeap.registry, "registry-heap-B/device")
	b.ReportMetric(idleHeap.later, "later-heap-B/device")
}

func measureIdleHeap(b *testing.B) {
	const devices = 100_000
	ctx := context.Background()
	ids := benchDeviceIDs(devices) // before the baseline: the benchmark's own data
	store := openBenchStore(b)
	clk := clocktest.New(epoch)
	stopped := newBenchCounter()
	cfg := actors.Config{PassivateAfter: time.Minute}
	e := newBenchEngine(b, store, clk, cfg, actors.Deps{Deactivated: stopped.add})
	base := benchHeapAlloc()

	if err := store.PutProduct(ctx, persistence.Product{ID: "bench-product", Name: "bench", Protocol: persistence.ProtocolMQTT}); err != nil {
		b.Fatal(err)
	}
	for from := 0; from < devices; from += persistence.MaxCreateDevices {
		batch := make([]persistence.Device, 0, persistence.MaxCreateDevices)
		for _, id := range ids[from:min(from+persistence.MaxCreateDevices, devices)] {
			batch = append(batch, persistence.Device{ID: id, ProductID: "bench-product", Secret: "secret-" + id})
		}
		if err := store.CreateDevices(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	registered := benchHeapAlloc()

	senders := benchSenders
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for d := g; d < devices; d += senders {
				in := &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}}
				if err := e.Deliver(ctx, ids[d], in); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	e.Settle()
	if n := e.Live()["device"]; n != devices {
		b.Fatalf("%d device actors alive, want %d", n, devices)
	}
	live := benchHeapAlloc()

	benchPassivateAll(b, e, clk, cfg, stopped, devices)
	idle := benchHeapAlloc()
	clk.Advance(cfg.PassivateAfter + time.Second)
	e.Settle()
	later := benchHeapAlloc()
	if got := benchJournaled(b, store, ids[:100]); got != 100 {
		b.Fatalf("%d events journaled for the first 100 devices, want 100", got)
	}
	runtime.KeepAlive(ids)
	runtime.KeepAlive(e)

	perDevice := func(after uint64) float64 { return (float64(after) - float64(base)) / devices }
	idleHeap.live, idleHeap.idle, idleHeap.later, idleHeap.registry = perDevice(live), perDevice(idle), perDevice(later), perDevice(registered)
}

// benchHeapAlloc returns the bytes of live heap objects after two full collections.
func benchHeapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkEngineReportsSynced measures device reports journaled per second
// as transports deliver them: one sender per device (a device waits for the
// acknowledgement of a report before it sends the next, as an MQTT QoS 1
// client with one message in flight does), each report a version that
// differs from the device's last, so each journals one event in a synced
// append. Since Deliver waits until a report is journaled, the devices'
// appends must share group commits for this to scale with the fleet.
func BenchmarkEngineReportsSynced(b *testing.B) {
	for _, devices := range []int{1, 64, 1000} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) {
			store := openBenchStore(b)
			clk := clocktest.New(epoch)
			e := newBenchEngine(b, store, clk, actors.Config{}, actors.Deps{})
			ids := benchDeviceIDs(devices)
			benchQueryAll(b, e, ids)
			e.Settle()
			ctx := context.Background()
			b.ResetTimer()
			var wg sync.WaitGroup
			for d, id := range ids {
				n := b.N / devices
				if d < b.N%devices {
					n++
				}
				wg.Go(func() {
					for r := range n {
						v := fmt.Sprintf("v%d", r)
						in := &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: &v}}}
						if err := e.Deliver(ctx, id, in); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			e.Settle()
			b.StopTimer()
			// Each device's first report also journals PresenceChanged.
			if got, want := benchJournaled(b, store, ids), b.N+min(b.N, devices); got != want {
				b.Fatalf("%d events journaled, want %d", got, want)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
		})
	}
}

// BenchmarkTaskQueriesWhileBusy (issue 21) measures Task (GetTask) and
// TaskDevices (a ListTaskDevices page of 100) while the task's actor is busy:
// benchSenders goroutines report the target version for the task's devices
// over and over, so that sub-tasks end ("same version") and start one after
// the other, each a synced append of the task. A query that waits in the
// task actor's mailbox costs what the actor has queued before it; one that
// reads the actor's published read model does not.
//
//	go test ./actors -run '^$' -bench TaskQueriesWhileBusy -benchtime 200x
func BenchmarkTaskQueriesWhileBusy(b *testing.B) {
	for _, q := range []struct {
		name  string
		limit int
	}{{"GetTask", 0}, {"ListTaskDevices", 100}} {
		b.Run(q.name, func(b *testing.B) {
			store := openBenchStore(b)
			clk := clocktest.New(epoch)
			e := newBenchEngine(b, store, clk, actors.Config{}, actors.Deps{})
			ctx := context.Background()
			ids := benchDeviceIDs(5000)
			if err := e.CreateTask(ctx, createTask("busy", messages.Protocol_PROTOCOL_MQTT, ids, nil)); err != nil {
				b.Fatal(err)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var delivered atomic.Int64
			for g := range benchSenders {
				wg.Go(func() {
					for {
						for d := g; d < len(ids); d += benchSenders {
							select {
							case <-stop:
								return
							default:
							}
							if err := e.Deliver(ctx, ids[d], versionReport("2.0")); err != nil {
								b.Error(err)
								return
							}
							delivered.Add(1)
						}
					}
				})
			}
			for delivered.Load() < 1000 {
				runtime.Gosched() // the load is under way before the clock starts
			}
			var v actors.TaskView
			for b.Loop() {
				var err error
				if v, err = e.TaskDevices(ctx, "busy", 0, q.limit, 0); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			b.ReportMetric(float64(v.Progress.Success), "succeeded")
		})
	}
}
