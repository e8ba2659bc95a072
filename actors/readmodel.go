package actors

import (
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/messages"
)

// taskModel is a live task's read model: what Task, TaskDevices and
// TaskWatch answer (status, counters, times, one row per sub-task in target
// order), published by the task actor after each step that changed it, so
// that a query never waits in the actor's mailbox behind the task's work.
//
// The actor is its only writer. A publication replaces the header and the
// rows the step's events name under the write lock, so its cost is that of
// what changed (a whole-task copy only on creation, activation and a retry
// of all sub-tasks), and a reader, under the read lock, sees the header and
// rows of one publication together. A reader holds the lock while it scans
// and copies one page; the actor waits at most for that, never for a query
// to be scheduled.
type taskModel struct {
	mu   sync.RWMutex
	head TaskView          // Subtasks stays nil
	rows []taskfsm.Subtask // in target order
	// wake is closed by the next publication; nil until a watcher asks
	// for it, so that a task nobody watches publishes without allocating.
	wake chan struct{}
}

// taskModels are the read models of the live tasks, by task ID. A model is
// added when its actor has recovered a created task (or created it) and
// removed when the actor stops, so only live tasks hold one.
type taskModels struct {
	mu sync.RWMutex
	m  map[string]*taskModel
}

func newTaskModels() *taskModels { return &taskModels{m: map[string]*taskModel{}} }

// get returns task id's model; nil when the task is not live.
func (ms *taskModels) get(id string) *taskModel {
	ms.mu.RLock()
	defer ms.mu.RUnlock()
	return ms.m[id]
}

// open publishes the whole of s as task id's model and returns it.
func (ms *taskModels) open(s taskfsm.State) *taskModel {
	tm := &taskModel{}
	tm.publishAll(s)
	ms.mu.Lock()
	ms.m[s.TaskID()] = tm
	ms.mu.Unlock()
	return tm
}

// drop removes task id's model if it is still tm. Its watchers are woken:
// they read the task again (and find it passivated, or its successor).
func (ms *taskModels) drop(id string, tm *taskModel) {
	ms.mu.Lock()
	if ms.m[id] == tm {
		delete(ms.m, id)
	}
	ms.mu.Unlock()
	tm.mu.Lock()
	tm.wakeLocked()
	tm.mu.Unlock()
}

func headOf(s taskfsm.State) TaskView {
	return TaskView{Task: s.Task(), Status: s.Status(), Progress: s.Progress(), CreatedAt: s.CreatedAt(), FinishedAt: s.FinishedAt()}
}

// publishAll replaces the model with the whole of s.
func (tm *taskModel) publishAll(s taskfsm.State) {
	rows := s.Subtasks(0, 0)
	head := headOf(s)
	tm.mu.Lock()
	tm.head, tm.rows = head, rows
	tm.wakeLocked()
	tm.mu.Unlock()
}

// publish brings the model up to s after a step whose events are events:
// the header, and the rows of the sub-tasks the events name.
func (tm *taskModel) publish(s taskfsm.State, events []proto.Message) {
	type row struct {
		pos int
		sub taskfsm.Subtask
	}
	var changed []row
	note := func(id string) {
		if pos, sub, ok := s.Locate(id); ok {
			changed = append(changed, row{pos, sub})
		}
	}
	for _, ev := range events {
		switch k := ev.(*messages.TaskEvent).GetKind().(type) {
		case *messages.TaskEvent_Created:
			tm.publishAll(s) // a second creation changes nothing; be whole anyway
			return
		case *messages.TaskEvent_SubtaskStarted:
			note(k.SubtaskStarted.GetDeviceId())
		case *messages.TaskEvent_SubtaskFinished:
			note(k.SubtaskFinished.GetDeviceId())
		case *messages.TaskEvent_RetryRequested:
			if len(k.RetryRequested.GetDeviceIds()) == 0 {
				tm.publishAll(s)
				return
			}
			for _, id := range k.RetryRequested.GetDeviceIds() {
				note(id)
			}
		}
	}
	head := headOf(s)
	tm.mu.Lock()
	tm.head = head
	for _, r := range changed {
		tm.rows[r.pos] = r.sub
	}
	tm.wakeLocked()
	tm.mu.Unlock()
}

func (tm *taskModel) wakeLocked() {
	if tm.wake != nil {
		close(tm.wake)
		tm.wake = nil
	}
}

// view is the task's header with a page of its rows: those with status
// (0: any), skipping offset of them, up to limit (none when limit <= 0).
func (tm *taskModel) view(offset, limit int, status messages.SubtaskStatus) TaskView {
	tm.mu.RLock()
	defer tm.mu.RUnlock()
	v := tm.head
	if limit <= 0 {
		return v
	}
	skipped := 0
	for i := range tm.rows {
		st := &tm.rows[i]
		if status != 0 && st.Status != status {
			continue
		}
		if skipped < offset {
			skipped++
			continue
		}
		v.Subtasks = append(v.Subtasks, *st)
		if len(v.Subtasks) == limit {
			break
		}
	}
	return v
}

// watch is the task's header and a channel closed at the next publication.
func (tm *taskModel) watch() (TaskView, <-chan struct{}) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if tm.wake == nil {
		tm.wake = make(chan struct{})
	}
	return tm.head, tm.wake
}
