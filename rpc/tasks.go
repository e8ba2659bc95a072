package rpc

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// API limits of a task request. The task's own rules and limits (device
// count, retry policy, schedule horizon, window) are taskfsm's: the handlers
// check them with taskfsm.Config's validation, against the engine's
// configuration.
const (
	maxTaskNameRunes = 128
	maxTaskGroups    = 1000
	// watchInterval is the least time between two WatchTask messages
	// before the task's final state (which is sent at once).
	watchInterval = 500 * time.Millisecond
)

// taskServer implements TaskService over the engine and the registry's
// task index.
type taskServer struct {
	*server
}

var _ otafleetv1connect.TaskServiceHandler = (*taskServer)(nil)

// engineErr maps an engine error: invalid input → invalid_argument (a
// taskfsm.FieldError as "field: problem", the text API users have always
// seen); the rest as toConnect (an invalid transition, e.g. stopping a
// finished task → failed_precondition, an unknown task → not_found; see
// kinds).
func engineErr(log *slog.Logger, op string, err error) error {
	if fe := new(taskfsm.FieldError); errors.As(err, &fe) {
		return invalid(fe.Field, "%s", fe.Problem)
	}
	return toConnect(log, op, err)
}

// taskNotFound turns the engine's not-found into one naming task_id.
func (s *taskServer) taskErr(op, id string, err error) error {
	if errors.Is(err, actors.ErrNotFound) {
		return notFound("task_id", "task", id)
	}
	return engineErr(s.log, op, err)
}

// newTaskID returns a fresh task ID, 24 lowercase hex digits that sort
// newest first: the bitwise complement of the creation time in nanoseconds,
// then 32 random bits.
func newTaskID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return fmt.Sprintf("%016x%s", ^uint64(now.UnixNano()), hex.EncodeToString(b[:]))
}

func taskToProto(v actors.TaskView) *v1.Task {
	t := v.Task
	p := v.Progress
	out := &v1.Task{
		TaskId:    t.GetTaskId(),
		Name:      t.GetName(),
		TaskType:  v1.TaskType(t.GetTaskType()),
		PackageId: t.GetPackage().GetPackageId(),
		GroupIds:  slices.Clone(t.GetGroupIds()),
		Status:    v1.TaskStatus(v.Status),
		Progress: &v1.TaskProgress{
			Total:         uint32(p.Total),
			Waiting:       uint32(p.Waiting),
			Processing:    uint32(p.Processing),
			Success:       uint32(p.Success),
			Fail:          uint32(p.Fail),
			FailWaitRetry: uint32(p.FailWaitRetry),
			Stopped:       uint32(p.Stopped),
		},
	}
	pol := &v1.Policy{}
	if mp := t.GetPolicy(); mp != nil {
		if at := mp.GetScheduleTimeUnixNano(); at != 0 {
			pol.ScheduleTime = timestamppb.New(messages.Time(at))
		}
		rc, ri := mp.GetRetryCount(), mp.GetRetryIntervalMinutes()
		pol.RetryCount, pol.RetryIntervalMinutes = &rc, &ri
		if w := mp.GetWindow(); w != nil {
			pol.Window = &v1.Window{StartMinute: w.GetStartMinute(), EndMinute: w.GetEndMinute(), TimeZone: w.GetTimeZone()}
		}
	} else {
		var zero uint32
		pol.RetryCount, pol.RetryIntervalMinutes = &zero, &zero
	}
	out.Policy = pol
	if !v.CreatedAt.IsZero() {
		out.CreateTime = timestamppb.New(v.CreatedAt)
	}
	if !v.FinishedAt.IsZero() && v.Status.Final() {
		out.FinishTime = timestamppb.New(v.FinishedAt)
	}
	return out
}

// policyMessage converts the request's policy for a task created at now,
// then checks it with the task machine's rules (cfg.ValidatePolicy; its
// error is a taskfsm.FieldError for engineErr). What is the API's own:
// unset optional fields (retry_interval_minutes unset with a retry_count is
// taskfsm.DefaultRetryIntervalMinutes), a valid timestamp, a past
// schedule_time meaning "at once", and the time zone as a text.
func policyMessage(cfg taskfsm.Config, p *v1.Policy, now time.Time) (*messages.Policy, error) {
	out := &messages.Policy{}
	if p == nil {
		return out, nil
	}
	out.RetryCount = p.GetRetryCount()
	out.RetryIntervalMinutes = p.GetRetryIntervalMinutes()
	if p.RetryIntervalMinutes == nil && out.RetryCount > 0 {
		out.RetryIntervalMinutes = taskfsm.DefaultRetryIntervalMinutes
	}
	if ts := p.GetScheduleTime(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return nil, invalid("policy.schedule_time", "%v", err)
		}
		if at := ts.AsTime(); at.After(now) {
			out.ScheduleTimeUnixNano = unixNano(at)
		}
	}
	if w := p.GetWindow(); w != nil {
		if err := checkText("policy.window.time_zone", w.GetTimeZone(), false, 64, false); err != nil {
			return nil, err
		}
		out.Window = &messages.Window{StartMinute: w.GetStartMinute(), EndMinute: w.GetEndMinute(), TimeZone: w.GetTimeZone()}
	}
	if err := cfg.ValidatePolicy(out, now.UnixNano()); err != nil {
		return nil, err
	}
	return out, nil
}

// unixNano is t in Unix nanoseconds, the latest such time for a t after
// 2262 (a valid timestamp may lie beyond what int64 nanoseconds hold).
func unixNano(t time.Time) int64 {
	if t.After(messages.Time(math.MaxInt64)) {
		return math.MaxInt64
	}
	return t.UnixNano()
}

// taskProtocol resolves the flow a product's devices run for a task type.
func taskProtocol(p persistence.Product, tt v1.TaskType) (messages.Protocol, error) {
	switch p.Protocol {
	case persistence.ProtocolMQTT:
		return messages.Protocol_PROTOCOL_MQTT, nil
	case persistence.ProtocolLWM2M:
		if tt == v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE {
			return messages.Protocol_PROTOCOL_LWM2M_FOTA, nil
		}
		if p.SoftwarePCP {
			return messages.Protocol_PROTOCOL_LWM2M_PCP, nil
		}
		return 0, connect.NewError(connect.CodeFailedPrecondition,
			fmt.Errorf("package_id: product %q has no software upgrade protocol", p.ID))
	}
	return 0, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("package_id: product %q has protocol %v", p.ID, p.Protocol))
}

// packageMessage is what a job needs of a registry package.
func packageMessage(p persistence.Package) *messages.Package {
	seg := p.SegmentSize
	if seg == 0 {
		seg = messages.PcpDefaultSegmentSize
	}
	check := p.CheckCode
	if check == 0 {
		// Spec 4.8: the first two bytes of the SHA-256, big-endian.
		check = uint32(binary.BigEndian.Uint16(p.SHA256[:2]))
	}
	return &messages.Package{
		PackageId:      p.ID,
		Version:        p.Version,
		SourceVersions: slices.Clone(p.SourceVersions),
		Size:           p.Size,
		FileName:       p.FileName,
		Sha256:         hex.EncodeToString(p.SHA256[:]),
		SegmentSize:    seg,
		CheckCode:      check,
		CustomInfo:     p.CustomInfo,
		OmitSign:       p.OmitSign,
	}
}

// targetDevice checks that device id (named field) is registered and of
// product; missing reports a device that does not resolve.
func (s *taskServer) targetDevice(ctx context.Context, field, id, product string) (missing bool, err error) {
	d, err := s.reg.GetDevice(ctx, id)
	if errors.Is(err, persistence.ErrNotFound) {
		return true, notFound(field, "device", id)
	}
	if err != nil {
		return false, toConnect(s.log, "CreateTask", err)
	}
	if d.ProductID != product {
		return false, invalid(field, "device %q belongs to product %q, not the package's product %q", id, d.ProductID, product)
	}
	return false, nil
}

func (s *taskServer) CreateTask(ctx context.Context, req *connect.Request[v1.CreateTaskRequest]) (*connect.Response[v1.CreateTaskResponse], error) {
	m := req.Msg
	if err := checkText("name", m.GetName(), true, maxTaskNameRunes, false); err != nil {
		return nil, err
	}
	for _, r := range m.GetName() {
		if r != '_' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			return nil, invalid("name", "contains %q: only letters, digits and '_' are allowed", r)
		}
	}
	tt := m.GetTaskType()
	if tt != v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE && tt != v1.TaskType_TASK_TYPE_SOFTWARE_UPGRADE {
		return nil, invalid("task_type", "%d is not TASK_TYPE_FIRMWARE_UPGRADE or TASK_TYPE_SOFTWARE_UPGRADE", int32(tt))
	}
	if err := checkID("package_id", m.GetPackageId()); err != nil {
		return nil, err
	}
	cfg := s.engine.TaskConfig()
	if err := cfg.ValidateDeviceCount(len(m.GetDeviceIds())); err != nil {
		return nil, engineErr(s.log, "CreateTask", err)
	}
	if n := len(m.GetGroupIds()); n > maxTaskGroups {
		return nil, invalid("group_ids", "%d groups, at most %d", n, maxTaskGroups)
	}
	if len(m.GetDeviceIds()) == 0 && len(m.GetGroupIds()) == 0 {
		return nil, invalid("device_ids", "at least one device_ids or group_ids entry is required")
	}
	for i, id := range m.GetDeviceIds() {
		if err := checkID(fmt.Sprintf("device_ids[%d]", i), id); err != nil {
			return nil, err
		}
	}
	for i, id := range m.GetGroupIds() {
		if err := checkID(fmt.Sprintf("group_ids[%d]", i), id); err != nil {
			return nil, err
		}
	}
	now := s.clock.Now()
	policy, err := policyMessage(cfg, m.GetPolicy(), now)
	if err != nil {
		return nil, engineErr(s.log, "CreateTask", err)
	}

	pkg, err := s.reg.GetPackage(ctx, m.GetPackageId())
	if errors.Is(err, persistence.ErrNotFound) {
		return nil, notFound("package_id", "package", m.GetPackageId())
	}
	if err != nil {
		return nil, toConnect(s.log, "CreateTask", err)
	}
	if int32(pkg.Type) != int32(tt) {
		return nil, invalid("package_id", "package %q is a %v package, task_type is %v", pkg.ID, pkg.Type, tt)
	}
	prod, err := s.reg.GetProduct(ctx, pkg.ProductID)
	if err != nil {
		if errors.Is(err, persistence.ErrNotFound) {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("package_id: the package's product %q no longer exists", pkg.ProductID))
		}
		return nil, toConnect(s.log, "CreateTask", err)
	}
	protocol, err := taskProtocol(prod, tt)
	if err != nil {
		return nil, err
	}
	pm := packageMessage(pkg)
	if err := devicefsm.ValidatePackage(messages.TaskType(tt), protocol, pm); err != nil {
		// The device machine would reject every sub-task: refuse the task.
		return nil, invalid("package_id", "%v", err)
	}

	// Targets: the explicit devices and the groups' members, each checked
	// once, sorted so the task lists its devices in ID order.
	seen := make(map[string]bool, len(m.GetDeviceIds()))
	var targets []string
	for i, id := range m.GetDeviceIds() {
		if seen[id] {
			continue
		}
		if _, err := s.targetDevice(ctx, fmt.Sprintf("device_ids[%d]", i), id, prod.ID); err != nil {
			return nil, err
		}
		seen[id] = true
		targets = append(targets, id)
	}
	var members []string
	for i, gid := range m.GetGroupIds() {
		field := fmt.Sprintf("group_ids[%d]", i)
		g, err := s.reg.GetGroup(ctx, gid)
		if errors.Is(err, persistence.ErrNotFound) {
			return nil, notFound(field, "group", gid)
		}
		if err != nil {
			return nil, toConnect(s.log, "CreateTask", err)
		}
		for _, id := range g.DeviceIDs {
			if seen[id] {
				continue
			}
			missing, err := s.targetDevice(ctx, field, id, prod.ID)
			if missing {
				continue // deleted since it joined the group
			}
			if err != nil {
				return nil, err
			}
			seen[id] = true
			targets = append(targets, id)
			members = append(members, id)
			if len(targets) > cfg.MaxTargets {
				return nil, invalid("group_ids", "more than %d devices with device_ids", cfg.MaxTargets)
			}
		}
	}
	if len(targets) == 0 {
		return nil, invalid("group_ids", "the groups have no devices")
	}
	slices.Sort(targets)
	slices.Sort(members)

	c := &messages.CreateTask{
		TaskId:           newTaskID(now),
		Name:             m.GetName(),
		TaskType:         messages.TaskType(tt),
		Protocol:         protocol,
		Package:          pm,
		SkipVersionCheck: prod.SkipVersionCheck,
		DeviceIds:        targets,
		GroupIds:         slices.Clone(m.GetGroupIds()),
		GroupMembers:     members,
		Policy:           policy,
	}
	// The index entry first: a crash between the two leaves an entry
	// without a task, which ListTasks skips, rather than a task nobody can
	// list.
	rec := persistence.TaskRecord{ID: c.GetTaskId(), Name: c.GetName(), PackageID: pkg.ID, Created: now}
	if err := s.reg.PutTask(ctx, rec); err != nil {
		return nil, toConnect(s.log, "CreateTask", err)
	}
	if err := s.engine.CreateTask(ctx, c); err != nil {
		if derr := s.reg.DeleteTask(context.WithoutCancel(ctx), rec.ID); derr != nil {
			s.log.Warn("rpc: CreateTask: removing the index entry of a task not created", "task", rec.ID, "error", derr)
		}
		return nil, engineErr(s.log, "CreateTask", err)
	}
	v, err := s.engine.Task(ctx, c.GetTaskId())
	if err != nil {
		return nil, engineErr(s.log, "CreateTask", err)
	}
	return connect.NewResponse(&v1.CreateTaskResponse{Task: taskToProto(v)}), nil
}

// task returns task id's view as the API's Task.
func (s *taskServer) task(ctx context.Context, op, id string) (*v1.Task, actors.TaskView, error) {
	if err := checkID("task_id", id); err != nil {
		return nil, actors.TaskView{}, err
	}
	v, err := s.engine.Task(ctx, id)
	if err != nil {
		return nil, v, s.taskErr(op, id, err)
	}
	return taskToProto(v), v, nil
}

func (s *taskServer) GetTask(ctx context.Context, req *connect.Request[v1.GetTaskRequest]) (*connect.Response[v1.GetTaskResponse], error) {
	t, _, err := s.task(ctx, "GetTask", req.Msg.GetTaskId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetTaskResponse{Task: t}), nil
}

func (s *taskServer) StopTask(ctx context.Context, req *connect.Request[v1.StopTaskRequest]) (*connect.Response[v1.StopTaskResponse], error) {
	id := req.Msg.GetTaskId()
	if err := checkID("task_id", id); err != nil {
		return nil, err
	}
	// The engine answers an unknown task with an invalid transition;
	// the API says not_found.
	if _, _, err := s.task(ctx, "StopTask", id); err != nil {
		return nil, err
	}
	if err := s.engine.StopTask(ctx, id); err != nil {
		return nil, s.taskErr("StopTask", id, err)
	}
	t, _, err := s.task(ctx, "StopTask", id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.StopTaskResponse{Task: t}), nil
}

func (s *taskServer) RetryTask(ctx context.Context, req *connect.Request[v1.RetryTaskRequest]) (*connect.Response[v1.RetryTaskResponse], error) {
	id := req.Msg.GetTaskId()
	if err := checkID("task_id", id); err != nil {
		return nil, err
	}
	if err := s.engine.TaskConfig().ValidateDeviceCount(len(req.Msg.GetDeviceIds())); err != nil {
		return nil, engineErr(s.log, "RetryTask", err)
	}
	for i, d := range req.Msg.GetDeviceIds() {
		if err := checkID(fmt.Sprintf("device_ids[%d]", i), d); err != nil {
			return nil, err
		}
	}
	// The engine answers an unknown task with an invalid transition;
	// the API says not_found.
	if _, _, err := s.task(ctx, "RetryTask", id); err != nil {
		return nil, err
	}
	// A retry downloads the package again: it must still exist.
	if rec, err := s.reg.GetTask(ctx, id); err == nil {
		if _, err := s.reg.GetPackage(ctx, rec.PackageID); errors.Is(err, persistence.ErrNotFound) {
			return nil, connect.NewError(connect.CodeFailedPrecondition,
				fmt.Errorf("task_id: the task's package %q has been deleted; create a new task", rec.PackageID))
		}
	}
	if err := s.engine.RetryTask(ctx, id, req.Msg.GetDeviceIds()); err != nil {
		return nil, s.taskErr("RetryTask", id, err)
	}
	t, _, err := s.task(ctx, "RetryTask", id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.RetryTaskResponse{Task: t}), nil
}

func (s *taskServer) ListTasks(ctx context.Context, req *connect.Request[v1.ListTasksRequest]) (*connect.Response[v1.ListTasksResponse], error) {
	m := req.Msg
	var want *messages.TaskStatus
	if m.Status != nil {
		st := m.GetStatus()
		if st <= v1.TaskStatus_TASK_STATUS_UNSPECIFIED || st > v1.TaskStatus_TASK_STATUS_STOPPED {
			return nil, invalid("status", "%d is not a task status", int32(st))
		}
		ms := messages.TaskStatus(st)
		want = &ms
	}
	after := m.GetPageToken()
	if after != "" {
		if err := persistence.ValidateID(after); err != nil {
			return nil, invalid("page_token", "not a token this server returned")
		}
	}
	limit := persistence.ListLimit(int(m.GetPageSize()))
	out := &v1.ListTasksResponse{}
	// Index entries are read a page at a time until this page is full; a
	// status filter may read many entries for a few tasks.
	for len(out.Tasks) < limit {
		recs, err := s.reg.ListTasks(ctx, after, limit)
		if err != nil {
			return nil, toConnect(s.log, "ListTasks", err)
		}
		for _, r := range recs {
			after = r.ID
			v, err := s.engine.Task(ctx, r.ID)
			if errors.Is(err, actors.ErrNotFound) {
				// An index entry whose task was never created (a crash
				// inside CreateTask).
				s.log.Debug("rpc: ListTasks: index entry without a task", "task", r.ID)
				continue
			}
			if err != nil {
				return nil, engineErr(s.log, "ListTasks", err)
			}
			if want != nil && v.Status != *want {
				continue
			}
			out.Tasks = append(out.Tasks, taskToProto(v))
			if len(out.Tasks) == limit {
				break
			}
		}
		if len(recs) < limit {
			return connect.NewResponse(out), nil // the index is exhausted
		}
	}
	// The page is full; the next one starts after its last entry read (an
	// empty next page is possible, as with every store listing).
	out.NextPageToken = after
	return connect.NewResponse(out), nil
}

// packageInUse returns the first unfinished task that installs package id,
// or "".
func (s *server) packageInUse(ctx context.Context, id string) (string, messages.TaskStatus, error) {
	if s.engine == nil {
		return "", 0, nil
	}
	after := ""
	for {
		recs, err := s.reg.ListTasks(ctx, after, persistence.MaxListLimit)
		if err != nil {
			return "", 0, err
		}
		for _, r := range recs {
			after = r.ID
			if r.PackageID != id {
				continue
			}
			v, err := s.engine.Task(ctx, r.ID)
			if errors.Is(err, actors.ErrNotFound) {
				continue
			}
			if err != nil {
				return "", 0, err
			}
			if !v.Status.Final() {
				return r.ID, v.Status, nil
			}
		}
		if len(recs) < persistence.MaxListLimit {
			return "", 0, nil
		}
	}
}

// stageName is the spec 5.9 name of a stage; "" when idle.
func stageName(st messages.Stage) string {
	if st == messages.Stage_STAGE_IDLE {
		return ""
	}
	return strings.TrimPrefix(st.String(), "STAGE_")
}

// The status_desc texts (shared/CONTRACT.md) that are not failure reasons.
const (
	descSucceeded = "Upgrade succeeded"
	descStopped   = "Stopped"
)

// subtaskTexts returns a sub-task's failure_reason and status_desc. The
// failure reason is the reason's exact text (spec 5.10, or the device's),
// the detail when the device gave no reason, and empty on success. The
// status_desc is the text of the final state: the failure reason for FAIL
// (and FAIL_WAIT_RETRY, the failure that waits for its retry); for SUCCESS
// the reason's text when it has one (REASON_SAME_VERSION: "The current
// version is the same as the target version"), else "Upgrade succeeded";
// "Stopped" for STOPPED; empty while WAITING or PROCESSING.
func subtaskTexts(st taskfsm.Subtask) (failure, desc string) {
	if st.Status == messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS {
		if st.Reason != messages.Reason_REASON_NONE {
			return "", messages.ReasonText(st.Reason)
		}
		return "", descSucceeded
	}
	failure = messages.ReasonText(st.Reason)
	if st.Reason == messages.Reason_REASON_NONE && st.Detail != "" {
		failure = st.Detail
	}
	switch st.Status {
	case messages.SubtaskStatus_SUBTASK_STATUS_FAIL, messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY:
		desc = failure
	case messages.SubtaskStatus_SUBTASK_STATUS_STOPPED:
		desc = descStopped
	}
	return failure, desc
}

func (s *taskServer) ListTaskDevices(ctx context.Context, req *connect.Request[v1.ListTaskDevicesRequest]) (*connect.Response[v1.ListTaskDevicesResponse], error) {
	m := req.Msg
	id := m.GetTaskId()
	if err := checkID("task_id", id); err != nil {
		return nil, err
	}
	var status messages.SubtaskStatus
	if m.Status != nil {
		st := m.GetStatus()
		if st <= v1.SubtaskStatus_SUBTASK_STATUS_UNSPECIFIED || st > v1.SubtaskStatus_SUBTASK_STATUS_STOPPED {
			return nil, invalid("status", "%d is not a sub-task status", int32(st))
		}
		status = messages.SubtaskStatus(st)
	}
	offset := 0
	if tok := m.GetPageToken(); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 || n > s.engine.TaskConfig().MaxTargets || strconv.Itoa(n) != tok {
			return nil, invalid("page_token", "not a token this server returned")
		}
		offset = n
	}
	limit := persistence.ListLimit(int(m.GetPageSize()))
	v, err := s.engine.TaskDevices(ctx, id, offset, limit+1, status)
	if err != nil {
		return nil, s.taskErr("ListTaskDevices", id, err)
	}
	subs := v.Subtasks
	out := &v1.ListTaskDevicesResponse{}
	if len(subs) > limit {
		subs = subs[:limit]
		out.NextPageToken = strconv.Itoa(offset + limit)
	}
	out.Devices = make([]*v1.TaskDevice, len(subs))
	for i, st := range subs {
		failure, desc := subtaskTexts(st)
		d := &v1.TaskDevice{
			DeviceId:          st.DeviceID,
			Status:            v1.SubtaskStatus(st.Status),
			FailureReason:     failure,
			StatusDesc:        desc,
			DeviceDescription: st.DeviceDescription,
			Attempts:          st.Attempt,
			SourceVersion:     st.SourceVersion,
			ResultCode:        st.ResultCode,
		}
		if !st.UpdatedAt.IsZero() {
			d.UpdateTime = timestamppb.New(st.UpdatedAt)
		}
		if !st.StartedAt.IsZero() {
			d.StartTime = timestamppb.New(st.StartedAt)
		}
		if !st.RetryAt.IsZero() {
			d.NextRetryTime = timestamppb.New(st.RetryAt)
		}
		if st.Status == messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
			// The stage is the device's, as its actor published it after
			// its last step (never asked of the actor, which may be busy).
			if j, ok := s.engine.DeviceJob(st.DeviceID); ok && j.TaskID == id && j.Attempt == st.Attempt {
				d.Stage = stageName(j.Stage)
				d.Progress = j.Progress
				if v := j.SourceVersion; v != "" {
					d.SourceVersion = v // this attempt has checked the version already
				}
			}
		}
		out.Devices[i] = d
	}
	return connect.NewResponse(out), nil
}

// sameState reports whether two views show the same status and progress.
func sameState(a, b actors.TaskView) bool {
	return a.Status == b.Status && a.Progress == b.Progress
}

// WatchTask sends the task's state, then each new status or progress the
// task publishes (actors.Engine.TaskWatch wakes it; nothing polls the task
// actor), at most one message per watchInterval so that a busy task costs
// its watchers little, and the final state at once, after which it ends.
func (s *taskServer) WatchTask(ctx context.Context, req *connect.Request[v1.WatchTaskRequest], stream *connect.ServerStream[v1.WatchTaskResponse]) error {
	id := req.Msg.GetTaskId()
	t, last, err := s.task(ctx, "WatchTask", id)
	if err != nil {
		return err
	}
	if err := stream.Send(&v1.WatchTaskResponse{Task: t}); err != nil {
		return err
	}
	timer := s.clock.NewTimer(watchInterval)
	defer timer.Stop()
	paced := false // watchInterval has passed since the last message
	for !last.Status.Final() {
		v, wake, err := s.engine.TaskWatch(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return s.taskErr("WatchTask", id, err)
		}
		if !sameState(v, last) && (paced || v.Status.Final()) {
			if err := stream.Send(&v1.WatchTaskResponse{Task: taskToProto(v)}); err != nil {
				return err
			}
			last, paced = v, false
			timer.Reset(watchInterval)
			continue
		}
		// Wait for the next publication, and for the interval to pass
		// (a change seen before it waits for it).
		var wait <-chan time.Time
		if !paced {
			wait = timer.C()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-wait:
			paced = true
		}
	}
	return nil
}
