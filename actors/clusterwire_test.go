package actors

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// TestWireErrorsKeepTheirKind: an error that crosses nodes (encoded in a
// ClusterReply, marshaled, decoded) still matches the sentinel it wrapped,
// and keeps its text.
func TestWireErrorsKeepTheirKind(t *testing.T) {
	for _, w := range wireErrors {
		err := fmt.Errorf("task %q: %w", "t1", w.err)
		b, merr := proto.Marshal(replyError(err))
		if merr != nil {
			t.Fatal(merr)
		}
		r := &messages.ClusterReply{}
		if err := proto.Unmarshal(b, r); err != nil {
			t.Fatal(err)
		}
		got := replyErr(r)
		if !errors.Is(got, w.err) || got.Error() != err.Error() {
			t.Errorf("%v came back as %v (is %v: %v)", err, got, w.err, errors.Is(got, w.err))
		}
	}
	if got := replyErr(replyError(errors.New("plain"))); got == nil || got.Error() != "plain" {
		t.Errorf("a plain error came back as %v", got)
	}
	if got := replyErr(replyError(nil)); got != nil {
		t.Errorf("nil came back as %v", got)
	}
}

// TestTaskViewWire: a task view survives its wire form.
func TestTaskViewWire(t *testing.T) {
	at := time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC)
	v := TaskView{
		Task:      &messages.TaskCreated{TaskId: "t1", Targets: []string{"a", "b"}},
		Status:    messages.TaskStatus_TASK_STATUS_PROCESSING,
		Progress:  taskfsm.Progress{Total: 2, Processing: 1, FailWaitRetry: 1},
		CreatedAt: at,
		Subtasks: []taskfsm.Subtask{
			{DeviceID: "a", Status: messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING, Attempt: 1, SourceVersion: "1.0", UpdatedAt: at, StartedAt: at},
			{DeviceID: "b", Status: messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY, Attempt: 1, AutoRetries: 1,
				Reason: messages.Reason_REASON_TASK_CONFLICT, Detail: "d", ResultCode: 3, DeviceDescription: "x",
				RetryAt: at.Add(time.Minute), UpdatedAt: at},
		},
	}
	b, err := proto.Marshal(taskViewToWire(v))
	if err != nil {
		t.Fatal(err)
	}
	w := &messages.TaskViewWire{}
	if err := proto.Unmarshal(b, w); err != nil {
		t.Fatal(err)
	}
	got := taskViewFromWire(w)
	if !proto.Equal(got.Task, v.Task) {
		t.Errorf("task %v, want %v", got.Task, v.Task)
	}
	got.Task, v.Task = nil, nil
	if !reflect.DeepEqual(got, v) {
		t.Errorf("view\n%+v\nwant\n%+v", got, v)
	}
}

// TestWireRequests: each ask has a wire form, and a reply decodes to what
// the local actor answers.
func TestWireRequests(t *testing.T) {
	task := Address{Kind: persistence.KindTask, ID: "t1"}
	for _, msg := range []any{command{in: &messages.TaskInput{}}, query{}, taskQuery{offset: 5, limit: 10, status: messages.SubtaskStatus_SUBTASK_STATUS_FAIL}} {
		req, ok := wireRequest(task, msg)
		if !ok || req.GetKind() != string(persistence.KindTask) || req.GetId() != "t1" {
			t.Errorf("%T: %v %v", msg, req, ok)
		}
	}
	if _, ok := wireRequest(task, activation{}); ok {
		t.Error("an activation has no wire form")
	}
	dev := devicefsm.New("d1")
	dev.FwVersion, dev.HasFw = "1.0", true
	res, err := decodeReply(Address{Kind: persistence.KindDevice, ID: "d1"}, &messages.ClusterReply{View: &messages.ClusterReply_Device{Device: devicefsm.Snapshot(dev)}})
	if err != nil || res.(DeviceView).State.FwVersion != "1.0" {
		t.Errorf("device view: %v %v", res, err)
	}
	cell := cellfsm.New("c1")
	res, err = decodeReply(Address{Kind: persistence.KindCell, ID: "c1"}, &messages.ClusterReply{View: &messages.ClusterReply_Cell{Cell: cellfsm.Snapshot(cell)}})
	if err != nil || res.(cellfsm.State).Used() != 0 {
		t.Errorf("cell view: %v %v", res, err)
	}
	res, err = decodeReply(task, replyError(fmt.Errorf("x: %w", taskfsm.ErrInvalidTransition)))
	if err != nil || !errors.Is(res.(error), taskfsm.ErrInvalidTransition) {
		t.Errorf("command error: %v %v", res, err)
	}
}

// TestRoutedInputChecks: a routed input must name a kind whose machine
// takes it and a valid ID.
func TestRoutedInputChecks(t *testing.T) {
	ok := &messages.RoutedInput{Kind: string(persistence.KindCell), Id: "c1", Input: &messages.RoutedInput_Cell{Cell: &messages.CellInput{}}}
	if _, _, err := routedInput(ok); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []*messages.RoutedInput{
		{Kind: string(persistence.KindDevice), Id: "c1", Input: &messages.RoutedInput_Cell{Cell: &messages.CellInput{}}},
		{Kind: string(persistence.KindCell), Id: "", Input: &messages.RoutedInput_Cell{Cell: &messages.CellInput{}}},
		{Kind: string(persistence.KindCell), Id: "c1"},
		{Kind: "x", Id: "c1", Input: &messages.RoutedInput_Task{Task: &messages.TaskInput{}}},
	} {
		if _, _, err := routedInput(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// TestCellViewWire: a cell view survives its wire form.
func TestCellViewWire(t *testing.T) {
	v := &CellView{
		CellID: "c1", InUse: 12, Budget: 50, HoldingMix: CoverageMix{Good: 2, Medium: 1}, Waiting: 3,
		WaitingMix: CoverageMix{Poor: 1, CellOnly: 2}, HeadUnits: 50,
		Holders: []CellHolder{
			{DeviceID: "a", Level: messages.CoverageLevel_COVERAGE_LEVEL_GOOD, Units: 1, TaskID: "t1"},
			{DeviceID: "b", Level: messages.CoverageLevel_COVERAGE_LEVEL_MEDIUM, Units: 5, TaskID: "t2"},
		},
		TaskHolding: map[string]uint32{"t1": 1, "t2": 1}, TaskWaiting: map[string]uint32{"t1": 3},
	}
	b, err := proto.Marshal(cellViewToWire(v))
	if err != nil {
		t.Fatal(err)
	}
	w := &messages.CellViewWire{}
	if err := proto.Unmarshal(b, w); err != nil {
		t.Fatal(err)
	}
	if got := cellViewFromWire(w); !reflect.DeepEqual(got, v) {
		t.Errorf("view\n%+v\nwant\n%+v", got, v)
	}
}
