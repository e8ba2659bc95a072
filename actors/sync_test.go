package actors_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
)

// TestDeliverSyncsOnlyAcknowledgedReports (issue 21): a report the device
// expects acknowledged is appended synced, whatever its events; the same
// report marked no_ack (an answer to the server's own request) is appended
// unsynced, since none of its events must be durable; Deliver waits for
// both. On every store.
func TestDeliverSyncsOnlyAcknowledgedReports(t *testing.T) {
	forEachStore(t, deliverSyncsOnlyAcknowledgedReports)
}

func deliverSyncsOnlyAcknowledgedReports(t *testing.T, s engineStore) {
	ctx := context.Background()
	st, _ := s.openFresh(t)
	store := newGatedStoreOn(st)
	e, _ := newDeliverEngine(t, store, nil, nil)

	for _, tc := range []struct {
		noAck    bool
		wantSync bool
	}{{false, true}, {true, false}} {
		in := versionReport(fmt.Sprintf("1.%v", tc.noAck))
		in.NoAck = tc.noAck
		done := deliverAsync(ctx, e, "dev-1", in)
		a := <-store.entered
		select {
		case err := <-done:
			t.Fatalf("no_ack=%v: Deliver returned (%v) while the report's append was in progress", tc.noAck, err)
		default:
		}
		if a.NoSync == tc.wantSync {
			t.Errorf("no_ack=%v: append NoSync=%v, want %v", tc.noAck, a.NoSync, !tc.wantSync)
		}
		store.gate <- nil
		if err := <-done; err != nil {
			t.Fatalf("no_ack=%v: Deliver: %v", tc.noAck, err)
		}
	}
}

// syncRecorder is a memstore that records each device append: its events'
// kinds and whether it was synced.
type syncRecorder struct {
	persistence.EventStore
	mu      sync.Mutex
	appends []recordedAppend
}

type recordedAppend struct {
	kind   string // persistence stream kind
	synced bool
	events []string // event kinds; StageEntered as "stage_entered(STAGE_...)"
}

func (r *syncRecorder) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	seq, err := r.EventStore.Append(ctx, a)
	if err != nil {
		return seq, err
	}
	rec := recordedAppend{kind: fmt.Sprint(a.Stream.Kind), synced: !a.NoSync}
	for _, ev := range a.Events {
		var name string
		switch a.Stream.Kind {
		case persistence.KindDevice:
			var de messages.DeviceEvent
			if err := proto.Unmarshal(ev.Payload, &de); err != nil {
				return seq, err
			}
			name = eventKind(&de)
			if st := de.GetStageEntered(); st != nil {
				name += "(" + st.GetStage().String() + ")"
			}
		case persistence.KindTask:
			var te messages.TaskEvent
			if err := proto.Unmarshal(ev.Payload, &te); err != nil {
				return seq, err
			}
			name = eventKind(&te)
		}
		rec.events = append(rec.events, name)
	}
	r.mu.Lock()
	r.appends = append(r.appends, rec)
	r.mu.Unlock()
	return seq, nil
}

func eventKind(m proto.Message) string {
	pm := m.ProtoReflect()
	fd := pm.WhichOneof(pm.Descriptor().Oneofs().ByName("kind"))
	if fd == nil {
		return ""
	}
	return string(fd.Name())
}

// syncOf returns whether the device appends holding event want were synced
// (one entry per such append).
func (r *syncRecorder) syncOf(want string) []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []bool
	for _, a := range r.appends {
		if a.kind != fmt.Sprint(persistence.KindDevice) {
			continue
		}
		for _, ev := range a.events {
			if ev == want {
				out = append(out, a.synced)
				break
			}
		}
	}
	return out
}

// TestAnswersAppendedUnsynced (issue 21): over a whole FOTA upgrade on the
// scripted devices, the steps of answers to the server's own requests (the
// version and radio reads, the package URI write) are appended unsynced,
// while the steps of confirmable notifications (object 5's State) are synced
// before their acknowledgement, and so are the steps whose events must be
// durable whatever their input (the package URI sent, the outcome).
// An MQTT progress report, which the device expects acknowledged (QoS 1),
// is synced although its event alone need not be.
func TestAnswersAppendedUnsynced(t *testing.T) {
	for _, tc := range []struct {
		protocol messages.Protocol
		want     map[string]bool // event kind → the append holding it is synced
		synced   int             // synced appends of the whole upgrade, the task's creation included
	}{
		{messages.Protocol_PROTOCOL_LWM2M_FOTA, map[string]bool{
			"stage_entered(STAGE_RADIO_QUERY)":   false, // the read answer of /3/0/3
			"radio_recorded":                     false, // the read answer of /4/0
			"package_uri_accepted":               false, // the /5/0/1 write answer
			"package_uri_sent":                   true,  // MustSync: the URI starts a download
			"stage_entered(STAGE_DOWNLOADING)":   true,  // /5/0/3 = 1, a CON notification
			"stage_entered(STAGE_DOWNLOADED)":    true,  // /5/0/3 = 2, a CON notification (and the Execute)
			"stage_entered(STAGE_UPGRADING)":     true,  // /5/0/3 = 3, a CON notification
			"stage_entered(STAGE_VERIFYING)":     true,  // /5/0/5 = 1, a CON notification
			"job_finished":                       false, // the /3/0/3 read answer; the task's SubtaskFinished syncs it
			"stage_entered(STAGE_VERSION_QUERY)": false, // the task's StartJob: nobody waits
		}, 7}, // NOTIFIED, the four CON notifications, SubtaskFinished; the task's creation
		{messages.Protocol_PROTOCOL_MQTT, map[string]bool{
			"progress_recorded": true, // a QoS 1 report: acknowledged once durable
			"job_finished":      true, // likewise (the final progress report)
		}, 0},
	} {
		t.Run(tc.protocol.String(), func(t *testing.T) {
			store := &syncRecorder{EventStore: memstore.New()}
			specs := fleet(1, 1, tc.protocol)
			r := newFleetRigOn(t, specs, store)
			ct := createTask("t1", tc.protocol, ids(specs), nil)
			if err := r.e.CreateTask(context.Background(), ct); err != nil {
				t.Fatal(err)
			}
			r.runUntil(r.finished("t1"), 24*time.Hour)
			if v := r.task("t1"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
				t.Fatalf("task ended %v", v.Status)
			}
			for ev, want := range tc.want {
				got := store.syncOf(ev)
				if len(got) == 0 {
					t.Errorf("no append holds %s", ev)
				}
				for i, synced := range got {
					if synced != want {
						t.Errorf("append %d holding %s: synced %v, want %v", i, ev, synced, want)
					}
				}
			}
			if tc.synced > 0 {
				store.mu.Lock()
				n, finished := 0, -1
				for i, a := range store.appends {
					if a.synced {
						n++
					}
					if slices.Contains(a.events, "job_finished") {
						finished = i
					}
					if slices.Contains(a.events, "subtask_finished") && i < finished {
						t.Errorf("the task's SubtaskFinished was appended before the device's JobFinished")
					}
				}
				store.mu.Unlock()
				if n != tc.synced {
					t.Errorf("%d synced appends, want %d", n, tc.synced)
				}
			}
			if t.Failed() {
				store.mu.Lock()
				var b strings.Builder
				for _, a := range store.appends {
					fmt.Fprintf(&b, "  %s synced=%v %v\n", a.kind, a.synced, a.events)
				}
				store.mu.Unlock()
				t.Logf("appends:\n%s", b.String())
			}
		})
	}
}

// TestUpdateResultAckedEarlyUnsynced (issue 21): a transport that marks the
// Update Result 1 notification no_ack (messages.DeviceInput.FoundAgainOnResume)
// gets its step (VERIFYING) appended unsynced, while State 1 and 3 stay
// synced (their stages MustSync): one synced append less per FOTA upgrade.
func TestUpdateResultAckedEarlyUnsynced(t *testing.T) {
	store := &syncRecorder{EventStore: memstore.New()}
	specs := fleet(1, 1, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	clk := clocktest.New(epoch)
	up := &transport.LateUplinks{}
	tr, err := memtransport.New(memtransport.Config{AckEarly: (*messages.DeviceInput).FoundAgainOnResume}, clk, up, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	if err := tr.Add(specs[0]); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, clk, store, tr, up)
	t.Cleanup(r.e.Stop)
	if err := tr.ConnectAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.e.Settle()
	if err := r.e.CreateTask(context.Background(), createTask("t1", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	r.runUntil(r.finished("t1"), 24*time.Hour)
	if v := r.task("t1"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
		t.Fatalf("task ended %v", v.Status)
	}
	for ev, want := range map[string]bool{
		"stage_entered(STAGE_DOWNLOADING)": true,
		"stage_entered(STAGE_DOWNLOADED)":  true,
		"stage_entered(STAGE_UPGRADING)":   true,
		"stage_entered(STAGE_VERIFYING)":   false,
	} {
		got := store.syncOf(ev)
		if len(got) == 0 {
			t.Errorf("no append holds %s", ev)
		}
		for i, synced := range got {
			if synced != want {
				t.Errorf("append %d holding %s: synced %v, want %v", i, ev, synced, want)
			}
		}
	}
}
