package actors_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/transport"
)

// taskBytesStore counts the bytes (stored key and value) written to task
// streams: events, snapshots and records.
type taskBytesStore struct {
	persistence.EventStore
	mu    sync.Mutex
	bytes int64
}

func (s *taskBytesStore) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	seq, err := s.EventStore.Append(ctx, a)
	if err != nil || a.Stream.Kind != persistence.KindTask {
		return seq, err
	}
	var n int
	for i, e := range a.Events {
		n += len(persistence.EventKey(a.Stream, seq-uint64(len(a.Events)-i))) + len(persistence.EncodeEvent(e))
	}
	n += recordBytes(a)
	s.mu.Lock()
	s.bytes += int64(n)
	s.mu.Unlock()
	return seq, nil
}

func recordBytes(a persistence.Append) int {
	var n int
	for _, r := range a.Records {
		n += len(persistence.RecordKey(a.Stream, r.Key))
		if !r.Delete {
			n += len(persistence.EncodeRecord(r))
		}
	}
	return n
}

func (s *taskBytesStore) SaveSnapshot(ctx context.Context, st persistence.Stream, snap persistence.Snapshot) error {
	err := s.EventStore.SaveSnapshot(ctx, st, snap)
	if err == nil && st.Kind == persistence.KindTask {
		s.mu.Lock()
		s.bytes += int64(len(persistence.SnapshotKey(st)) + len(persistence.EncodeSnapshot(snap)))
		s.mu.Unlock()
	}
	return err
}

// runBenchCampaign runs one FOTA task over n scripted devices (every 50th
// fails its first download and is retried) on store to its end.
func runBenchCampaign(b *testing.B, store persistence.EventStore, n int) {
	b.Helper()
	ctx := context.Background()
	clk := clocktest.New(epoch)
	up := &transport.LateUplinks{}
	tr, err := memtransport.New(memtransport.Config{}, clk, up, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	specs := fleet(n, max(20, n/50), messages.Protocol_PROTOCOL_LWM2M_FOTA)
	for i := range specs {
		if i%50 == 0 {
			specs[i].Behaviour.FailDownloads = 1
		}
		if err := tr.Add(specs[i]); err != nil {
			b.Fatal(err)
		}
	}
	e, err := actors.New(actors.Config{PassivateAfter: 10 * time.Minute}, actors.Deps{Store: store, Clock: clk, Transport: tr})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Stop()
	up.Set(e)
	if err := e.Start(ctx); err != nil {
		b.Fatal(err)
	}
	if err := tr.ConnectAll(ctx); err != nil {
		b.Fatal(err)
	}
	e.Settle()
	if err := e.CreateTask(ctx, createTask("campaign", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5})); err != nil {
		b.Fatal(err)
	}
	end := clk.Now().Add(48 * time.Hour)
	for {
		e.Settle()
		v, err := e.Task(ctx, "campaign")
		if err != nil {
			b.Fatal(err)
		}
		if v.Status.Final() {
			if v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
				b.Fatalf("campaign ended %v %+v", v.Status, v.Progress)
			}
			return
		}
		next, ok := clk.NextDeadline()
		if !ok || next.After(end) {
			b.Fatalf("campaign stalled: %+v", v.Progress)
		}
		clk.AdvanceTo(next)
	}
}

// BenchmarkTaskBytesPerUpgrade runs a FOTA campaign to its end and reports
// the bytes written to the task's stream (keys and values of its events,
// snapshots and records) per upgraded device.
//
//	go test ./actors -run '^$' -bench TaskBytesPerUpgrade -benchtime 1x
func BenchmarkTaskBytesPerUpgrade(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			var total int64
			for range b.N {
				store := &taskBytesStore{EventStore: memstore.New()}
				runBenchCampaign(b, store, n)
				total += store.bytes
			}
			b.ReportMetric(float64(total)/float64(b.N)/float64(n), "task-B/upgrade")
			b.ReportMetric(float64(total)/float64(b.N), "task-B/campaign")
		})
	}
}

// BenchmarkTaskRecovery recovers the actor of a finished 10,000-device
// task (every sub-task changed) from a Pebble store in memory: the time a
// new engine takes to answer the first query of the task.
//
//	go test ./actors -run '^$' -bench TaskRecovery -benchtime 20x
func BenchmarkTaskRecovery(b *testing.B) {
	const n = 10000
	ctx := context.Background()
	store, err := pebblestore.Open("db", pebblestore.Options{FS: vfs.NewMem()})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	runBenchCampaign(b, store, n)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		clk := clocktest.New(epoch)
		e, err := actors.New(actors.Config{}, actors.Deps{Store: store, Clock: clk, Transport: nullTransport{}})
		if err != nil {
			b.Fatal(err)
		}
		if err := e.Start(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		v, err := e.Task(ctx, "campaign")
		b.StopTimer()
		if err != nil || v.Progress.Success != n {
			b.Fatalf("recovered %+v, %v", v.Progress, err)
		}
		e.Stop()
		b.StartTimer()
	}
}
