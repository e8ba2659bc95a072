package actors

import (
	"context"
	"errors"
	"fmt"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// wireErrors are the sentinels an error keeps across nodes, in the order
// they are tried (the first one an error wraps is its code).
var wireErrors = []struct {
	code messages.ClusterReply_ErrorCode
	err  error
}{
	{messages.ClusterReply_NOT_FOUND, ErrNotFound},
	{messages.ClusterReply_CLOSED, ErrClosed},
	{messages.ClusterReply_TIMEOUT, ErrTimeout},
	{messages.ClusterReply_UNAVAILABLE, persistence.ErrUnavailable},
	{messages.ClusterReply_CONFLICT, persistence.ErrConflict},
	{messages.ClusterReply_INVALID_INPUT, taskfsm.ErrInvalidInput},
	{messages.ClusterReply_INVALID_TRANSITION, taskfsm.ErrInvalidTransition},
	{messages.ClusterReply_STORE_NOT_FOUND, persistence.ErrNotFound},
	{messages.ClusterReply_INVALID, persistence.ErrInvalid},
	{messages.ClusterReply_CANCELED, context.Canceled},
	{messages.ClusterReply_DEADLINE, context.DeadlineExceeded},
}

// replyError encodes err (nil: OK) as a reply.
func replyError(err error) *messages.ClusterReply {
	if err == nil {
		return &messages.ClusterReply{}
	}
	code := messages.ClusterReply_OTHER
	for _, w := range wireErrors {
		if errors.Is(err, w.err) {
			code = w.code
			break
		}
	}
	return &messages.ClusterReply{Code: code, Error: err.Error()}
}

// remoteError is an error of another node: its text, and the sentinel it
// wrapped there, so that errors.Is holds here too.
type remoteError struct {
	msg string
	is  error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.is }

// replyErr decodes a reply's error (nil when OK).
func replyErr(r *messages.ClusterReply) error {
	if r.GetCode() == messages.ClusterReply_OK {
		return nil
	}
	for _, w := range wireErrors {
		if w.code == r.GetCode() {
			return &remoteError{msg: r.GetError(), is: w.err}
		}
	}
	return errors.New(r.GetError())
}

// wireRequest is the request form of a local ask's message; ok is false
// for one that has none.
func wireRequest(a Address, msg any) (*messages.ClusterRequest, bool) {
	req := &messages.ClusterRequest{Kind: string(a.Kind), Id: a.ID}
	switch m := msg.(type) {
	case command:
		in, ok := m.in.(*messages.TaskInput)
		if !ok {
			return nil, false
		}
		req.Request = &messages.ClusterRequest_TaskCommand{TaskCommand: in}
	case query:
		req.Request = &messages.ClusterRequest_View{View: &messages.ViewQuery{}}
	case taskQuery:
		req.Request = &messages.ClusterRequest_View{View: &messages.ViewQuery{Offset: uint32(m.offset), Limit: uint32(m.limit), Status: m.status}}
	default:
		return nil, false
	}
	return req, true
}

// decodeReply turns a reply to a wire request back into what the local
// actor answers: nil or an error for a command, the view for a query.
func decodeReply(a Address, r *messages.ClusterReply) (any, error) {
	if err := replyErr(r); err != nil {
		return err, nil
	}
	switch v := r.GetView().(type) {
	case nil:
		return nil, nil
	case *messages.ClusterReply_Device:
		s, err := devicefsm.FromSnapshot(v.Device)
		if err != nil {
			return nil, fmt.Errorf("actors: cluster: the view of %s: %w", a, err)
		}
		return DeviceView{State: s}, nil
	case *messages.ClusterReply_Cell:
		s, err := cellfsm.FromSnapshot(v.Cell)
		if err != nil {
			return nil, fmt.Errorf("actors: cluster: the view of %s: %w", a, err)
		}
		return s, nil
	case *messages.ClusterReply_Task:
		return taskViewFromWire(v.Task), nil
	}
	return nil, fmt.Errorf("actors: cluster: unknown view of %s", a)
}

// viewLocal answers a view request from this node's actor or read model.
func (e *Engine) viewLocal(ctx context.Context, a Address, q *messages.ViewQuery) *messages.ClusterReply {
	if a.Kind == persistence.KindTask {
		var v TaskView
		var err error
		if tm := e.taskModels.get(a.ID); tm != nil {
			v = tm.view(int(q.GetOffset()), int(q.GetLimit()), q.GetStatus())
		} else {
			v, err = e.askTaskLocal(ctx, a.ID, int(q.GetOffset()), int(q.GetLimit()), q.GetStatus())
		}
		if err != nil {
			return replyError(err)
		}
		return &messages.ClusterReply{View: &messages.ClusterReply_Task{Task: taskViewToWire(v)}}
	}
	res, err := e.askLocal(ctx, a, query{})
	if err != nil {
		return replyError(err)
	}
	switch v := res.(type) {
	case error:
		return replyError(v)
	case DeviceView:
		return &messages.ClusterReply{View: &messages.ClusterReply_Device{Device: devicefsm.Snapshot(v.State)}}
	case cellfsm.State:
		return &messages.ClusterReply{View: &messages.ClusterReply_Cell{Cell: cellfsm.Snapshot(v)}}
	}
	return replyError(fmt.Errorf("actors: cluster: no wire form for the view of %s (%T)", a, res))
}

// commandLocal runs a task command on this node's actor.
func (e *Engine) commandLocal(ctx context.Context, a Address, in *messages.TaskInput) error {
	if a.Kind != persistence.KindTask {
		return fmt.Errorf("%w: a task command for %s", persistence.ErrInvalid, a)
	}
	res, err := e.askLocal(ctx, a, command{in: in})
	if err != nil {
		return err
	}
	if res == nil {
		return nil
	}
	return res.(error)
}

func taskViewToWire(v TaskView) *messages.TaskViewWire {
	w := &messages.TaskViewWire{
		Task: v.Task, Status: v.Status,
		Progress: &messages.TaskSnapshot_Progress{
			Total: uint32(v.Progress.Total), Waiting: uint32(v.Progress.Waiting), Processing: uint32(v.Progress.Processing),
			Success: uint32(v.Progress.Success), Fail: uint32(v.Progress.Fail), FailWaitRetry: uint32(v.Progress.FailWaitRetry),
			Stopped: uint32(v.Progress.Stopped),
		},
		CreatedAtUnixNano:  messages.UnixNano(v.CreatedAt),
		FinishedAtUnixNano: messages.UnixNano(v.FinishedAt),
	}
	for _, s := range v.Subtasks {
		w.Subtasks = append(w.Subtasks, &messages.TaskViewWire_Row{DeviceId: s.DeviceID, Subtask: &messages.TaskSnapshot_Subtask{
			Status: s.Status, Attempt: s.Attempt, AutoRetries: s.AutoRetries, Reason: s.Reason, Detail: s.Detail,
			ResultCode: s.ResultCode, RetryAtUnixNano: messages.UnixNano(s.RetryAt), SourceVersion: s.SourceVersion,
			UpdatedAtUnixNano: messages.UnixNano(s.UpdatedAt), StartedAtUnixNano: messages.UnixNano(s.StartedAt), DeviceDescription: s.DeviceDescription,
		}})
	}
	return w
}

func taskViewFromWire(w *messages.TaskViewWire) TaskView {
	p := w.GetProgress()
	v := TaskView{
		Task: w.GetTask(), Status: w.GetStatus(),
		Progress: taskfsm.Progress{
			Total: int(p.GetTotal()), Waiting: int(p.GetWaiting()), Processing: int(p.GetProcessing()),
			Success: int(p.GetSuccess()), Fail: int(p.GetFail()), FailWaitRetry: int(p.GetFailWaitRetry()),
			Stopped: int(p.GetStopped()),
		},
		CreatedAt:  messages.Time(w.GetCreatedAtUnixNano()),
		FinishedAt: messages.Time(w.GetFinishedAtUnixNano()),
	}
	for _, r := range w.GetSubtasks() {
		s := r.GetSubtask()
		v.Subtasks = append(v.Subtasks, taskfsm.Subtask{
			DeviceID: r.GetDeviceId(), Status: s.GetStatus(), Attempt: s.GetAttempt(), AutoRetries: s.GetAutoRetries(),
			Reason: s.GetReason(), Detail: s.GetDetail(), ResultCode: s.GetResultCode(), DeviceDescription: s.GetDeviceDescription(),
			RetryAt: messages.Time(s.GetRetryAtUnixNano()), SourceVersion: s.GetSourceVersion(),
			UpdatedAt: messages.Time(s.GetUpdatedAtUnixNano()), StartedAt: messages.Time(s.GetStartedAtUnixNano()),
		})
	}
	return v
}

func mixToWire(m CoverageMix) *messages.CellViewWire_Mix {
	return &messages.CellViewWire_Mix{Good: m.Good, Medium: m.Medium, Poor: m.Poor, CellOnly: m.CellOnly}
}

func mixFromWire(m *messages.CellViewWire_Mix) CoverageMix {
	return CoverageMix{Good: m.GetGood(), Medium: m.GetMedium(), Poor: m.GetPoor(), CellOnly: m.GetCellOnly()}
}

func cellViewToWire(v *CellView) *messages.CellViewWire {
	w := &messages.CellViewWire{
		CellId: v.CellID, InUse: v.InUse, Budget: v.Budget, HoldingMix: mixToWire(v.HoldingMix),
		Waiting: v.Waiting, WaitingMix: mixToWire(v.WaitingMix), HeadUnits: v.HeadUnits,
		TaskHolding: v.TaskHolding, TaskWaiting: v.TaskWaiting,
	}
	for _, h := range v.Holders {
		w.Holders = append(w.Holders, &messages.CellViewWire_Holder{DeviceId: h.DeviceID, Level: h.Level, Units: h.Units, TaskId: h.TaskID})
	}
	return w
}

func cellViewFromWire(w *messages.CellViewWire) *CellView {
	v := &CellView{
		CellID: w.GetCellId(), InUse: w.GetInUse(), Budget: w.GetBudget(), HoldingMix: mixFromWire(w.GetHoldingMix()),
		Waiting: w.GetWaiting(), WaitingMix: mixFromWire(w.GetWaitingMix()), HeadUnits: w.GetHeadUnits(),
		TaskHolding: w.GetTaskHolding(), TaskWaiting: w.GetTaskWaiting(),
	}
	for _, h := range w.GetHolders() {
		v.Holders = append(v.Holders, CellHolder{DeviceID: h.GetDeviceId(), Level: h.GetLevel(), Units: h.GetUnits(), TaskID: h.GetTaskId()})
	}
	return v
}
