package actors_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// markRecorder is a memstore that records, per stream, the active mark of
// each append (nil: left as it was).
type markRecorder struct {
	persistence.EventStore
	mu    sync.Mutex
	marks map[persistence.Stream][]*bool
}

func (r *markRecorder) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	seq, err := r.EventStore.Append(ctx, a)
	if err != nil {
		return seq, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var m *bool
	if a.Active != nil {
		v := *a.Active
		m = &v
	}
	r.marks[a.Stream] = append(r.marks[a.Stream], m)
	return seq, nil
}

// TestActiveMarkWrittenOnChange (issue 21): over whole upgrades, an actor's
// append carries its stream's active mark only when the mark changes (and
// on its first append, whose mark it cannot know), not with every batch;
// the marks the store ends with are those of the actors' states: no device
// or cell active once the task is done.
func TestActiveMarkWrittenOnChange(t *testing.T) {
	for _, protocol := range []messages.Protocol{messages.Protocol_PROTOCOL_LWM2M_FOTA, messages.Protocol_PROTOCOL_MQTT} {
		t.Run(protocol.String(), func(t *testing.T) {
			store := &markRecorder{EventStore: memstore.New(), marks: map[persistence.Stream][]*bool{}}
			specs := fleet(2, 1, protocol)
			r := newFleetRigOn(t, specs, store)
			if err := r.e.CreateTask(context.Background(), createTask("t1", protocol, ids(specs), nil)); err != nil {
				t.Fatal(err)
			}
			r.runUntil(r.finished("t1"), 24*time.Hour)
			if v := r.task("t1"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
				t.Fatalf("task ended %v", v.Status)
			}
			r.e.Settle()
			store.mu.Lock()
			for st, marks := range store.marks {
				if marks[0] == nil {
					t.Errorf("%s: the first append carries no mark", st)
				}
				var last *bool
				unmarked := 0
				for i, m := range marks {
					if m == nil {
						unmarked++
						continue
					}
					if last != nil && *m == *last {
						t.Errorf("%s: append %d writes the mark %v it already has", st, i, *m)
					}
					last = m
				}
				if st.Kind == persistence.KindDevice {
					if last == nil || *last {
						t.Errorf("%s: the last mark written is %v, want false (the job ended)", st, last)
					}
					if unmarked == 0 {
						t.Errorf("%s: every one of %d appends carries the mark", st, len(marks))
					}
				}
			}
			store.mu.Unlock()
			for _, kind := range []persistence.Kind{persistence.KindDevice, persistence.KindCell} {
				if err := store.Active(context.Background(), kind, func(id string) error {
					t.Errorf("%s %s still marked active", kind, id)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
