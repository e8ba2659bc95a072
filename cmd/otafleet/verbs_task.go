package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/bench"
	"github.com/otafleet/otafleet/messages"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// exitTaskNotSuccessful is task watch's exit code for a task that ended
// other than in TASK_STATUS_SUCCESS.
const exitTaskNotSuccessful = 3

var taskHeader = []string{"TASK", "NAME", "TYPE", "STATUS", "TOTAL", "SUCCESS", "FAIL", "PROCESSING", "WAITING", "RETRY-WAIT", "STOPPED", "CREATED"}

func taskStatusName(s v1.TaskStatus) string { return enumName(s.String(), "TASK_STATUS_") }

func taskRow(t *v1.Task) []string {
	p := t.GetProgress()
	n := func(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
	typ := "firmware"
	if t.GetTaskType() == v1.TaskType_TASK_TYPE_SOFTWARE_UPGRADE {
		typ = "software"
	}
	return []string{t.GetTaskId(), t.GetName(), typ, taskStatusName(t.GetStatus()), n(p.GetTotal()), n(p.GetSuccess()), n(p.GetFail()),
		n(p.GetProcessing()), n(p.GetWaiting()), n(p.GetFailWaitRetry()), n(p.GetStopped()), fmtTime(t.GetCreateTime())}
}

// showTask prints one task: every field as name: value.
func (o *clientOpts) showTask(t *v1.Task) error {
	row := taskRow(t)
	pol := t.GetPolicy()
	window := "any time"
	if w := pol.GetWindow(); w != nil {
		tz := w.GetTimeZone()
		if tz == "" {
			tz = "UTC"
		}
		window = fmt.Sprintf("%02d:%02d-%02d:%02d %s", w.GetStartMinute()/60, w.GetStartMinute()%60, w.GetEndMinute()/60, w.GetEndMinute()%60, tz)
	}
	schedule := "at once"
	if pol.GetScheduleTime() != nil {
		schedule = fmtTime(pol.GetScheduleTime())
	}
	return o.fields("task", row[0], "name", row[1], "type", row[2], "package", t.GetPackageId(), "status", row[3],
		"progress", fmt.Sprintf("total %s, success %s, fail %s, processing %s, waiting %s, waiting to retry %s, stopped %s",
			row[4], row[5], row[6], row[7], row[8], row[9], row[10]),
		"groups", orDash(strings.Join(t.GetGroupIds(), " ")),
		"schedule", schedule, "retries", fmt.Sprintf("%d, every %d min", pol.GetRetryCount(), pol.GetRetryIntervalMinutes()),
		"window", window, "created", row[11], "finished", fmtTime(t.GetFinishTime()))
}

// parseWindow reads HH:MM-HH:MM into minutes after midnight.
func parseWindow(s string) (start, end uint32, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("--window %q: want HH:MM-HH:MM", s)
	}
	minutes := func(hm string) (uint32, error) {
		t, err := time.Parse("15:04", strings.TrimSpace(hm))
		if err != nil {
			return 0, fmt.Errorf("--window %q: %q is not HH:MM", s, hm)
		}
		return uint32(t.Hour()*60 + t.Minute()), nil
	}
	if start, err = minutes(a); err != nil {
		return 0, 0, err
	}
	if end, err = minutes(b); err != nil {
		return 0, 0, err
	}
	return start, end, nil
}

// parseSchedule reads an RFC 3339 time or a duration from now. A time
// before now is refused: the API would start such a task at once, which is
// not what a user who typed a time wants.
func parseSchedule(s string, now time.Time) (time.Time, error) {
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		d, derr := time.ParseDuration(s)
		if derr != nil {
			return time.Time{}, fmt.Errorf("--schedule %q: want an RFC 3339 time (2026-11-24T02:00:00Z) or a delay (90m)", s)
		}
		at = now.Add(d)
	}
	if at.Before(now) {
		return time.Time{}, fmt.Errorf("--schedule %q is in the past (it is %s now); leave --schedule out to start at once", s, now.UTC().Format(time.RFC3339))
	}
	return at, nil
}

func taskCreate(o *clientOpts) *cobra.Command {
	var name, typ, pkg, devicesFile, schedule, window, tz string
	var devices, groups []string
	var retryCount, retryInterval uint32
	cmd := &cobra.Command{
		Use:   "create --name NAME --type firmware|software --package PACKAGE_ID (--device ID... | --group GROUP_ID... | --devices-file F) [policy flags]",
		Short: "Create an upgrade task for devices and groups (at most 30,000 devices)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseEnum("--type", strings.TrimSuffix(strings.ToLower(typ), "_upgrade"), "TASK_TYPE_", map[string]int32{
				"TASK_TYPE_FIRMWARE": int32(v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE), "TASK_TYPE_SOFTWARE": int32(v1.TaskType_TASK_TYPE_SOFTWARE_UPGRADE),
			})
			if err != nil {
				return err
			}
			if devicesFile != "" {
				fd, err := readDeviceFile(devicesFile)
				if err != nil {
					return usageError(err)
				}
				for _, d := range fd {
					devices = append(devices, d.GetDeviceId())
				}
			}
			req := &v1.CreateTaskRequest{Name: name, TaskType: v1.TaskType(t), PackageId: pkg, DeviceIds: devices, GroupIds: groups, Policy: &v1.Policy{}}
			if cmd.Flags().Changed("retry-count") {
				req.Policy.RetryCount = &retryCount
			}
			if cmd.Flags().Changed("retry-interval") {
				req.Policy.RetryIntervalMinutes = &retryInterval
			}
			if schedule != "" {
				at, err := parseSchedule(schedule, time.Now())
				if err != nil {
					return usageError(err)
				}
				req.Policy.ScheduleTime = timestamppb.New(at)
			}
			if window != "" {
				start, end, err := parseWindow(window)
				if err != nil {
					return usageError(err)
				}
				req.Policy.Window = &v1.Window{StartMinute: start, EndMinute: end, TimeZone: tz}
			} else if tz != "" {
				return usageError(errors.New("--time-zone needs --window"))
			}
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.CreateTaskResponse], error) {
				return c.tasks.CreateTask(ctx, connect.NewRequest(req))
			}, func(res *v1.CreateTaskResponse) error { return o.table(taskHeader, [][]string{taskRow(res.GetTask())}) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "display name: letters, digits and '_', at most 128")
	f.StringVar(&typ, "type", "", "firmware or software (the package's type)")
	f.StringVar(&pkg, "package", "", "the package to install")
	f.StringSliceVar(&devices, "device", nil, "a target device (repeat or comma-separate)")
	f.StringSliceVar(&groups, "group", nil, "a target group (repeat or comma-separate)")
	f.StringVar(&devicesFile, "devices-file", "", "target devices from a file, one ID per line (a device create --file works too)")
	f.StringVar(&schedule, "schedule", "", "start at this RFC 3339 time or after this delay (within 7 days); default: at once")
	f.Uint32Var(&retryCount, "retry-count", 0, "retries of a failed device, 0..5")
	f.Uint32Var(&retryInterval, "retry-interval", 0, "minutes between a failure and its retry, 1..1440 (default 5 with --retry-count)")
	f.StringVar(&window, "window", "", "daily window HH:MM-HH:MM in which devices start upgrading (may span midnight)")
	f.StringVar(&tz, "time-zone", "", "IANA time zone of --window; default UTC")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("type")
	_ = cmd.MarkFlagRequired("package")
	return cmd
}

func taskGet(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "get TASK_ID", Short: "Show a task with its progress", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.GetTaskResponse], error) {
				return c.tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: args[0]}))
			}, func(res *v1.GetTaskResponse) error { return o.showTask(res.GetTask()) })
		},
	}
}

func taskList(o *clientOpts) *cobra.Command {
	var l listFlags
	var status string
	cmd := &cobra.Command{
		Use: "list [--status S]", Short: "List tasks, newest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &v1.ListTasksRequest{PageSize: l.pageSize}
			if status != "" {
				st, err := parseEnum("--status", status, "TASK_STATUS_", v1.TaskStatus_value)
				if err != nil {
					return err
				}
				req.Status = v1.TaskStatus(st).Enum()
			}
			return listShow(o, cmd, &l, func(ctx context.Context, c *client, token string) (*connect.Response[v1.ListTasksResponse], error) {
				req.PageToken = token
				return c.tasks.ListTasks(ctx, connect.NewRequest(req))
			}, func(all, page *v1.ListTasksResponse) string {
				all.Tasks, all.NextPageToken = append(all.Tasks, page.GetTasks()...), page.GetNextPageToken()
				return all.NextPageToken
			}, func(all *v1.ListTasksResponse) error {
				rows := make([][]string, len(all.Tasks))
				for i, t := range all.Tasks {
					rows[i] = taskRow(t)
				}
				return o.table(taskHeader, rows)
			})
		},
	}
	cmd.Flags().StringVar(&status, "status", "", "only tasks with this status: waiting, processing, success, fail, partial_success, stopping or stopped")
	l.register(cmd)
	return cmd
}

func taskStop(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "stop TASK_ID", Short: "Stop a task (running devices are told to stop)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.StopTaskResponse], error) {
				return c.tasks.StopTask(ctx, connect.NewRequest(&v1.StopTaskRequest{TaskId: args[0]}))
			}, func(res *v1.StopTaskResponse) error { return o.table(taskHeader, [][]string{taskRow(res.GetTask())}) })
		},
	}
}

func taskRetry(o *clientOpts) *cobra.Command {
	var devices []string
	cmd := &cobra.Command{
		Use: "retry TASK_ID [--device ID]...", Short: "Give a running or finished task's failed devices a new attempt now", Args: cobra.ExactArgs(1),
		Long: `Give the failed devices of a task a new attempt now: every device that failed
(FAIL), waits for its policy retry (FAIL_WAIT_RETRY) or stopped while the task
ran (STOPPED), or only those named with --device.

The task must be running or have finished with failures (PROCESSING, FAIL or
PARTIAL_SUCCESS). A stopped task cannot be retried (spec 5.4): create a new task
for its devices instead.

A device waiting for its policy retry runs that retry now, without an extra
attempt; a failed or stopped device starts again with the policy's retries.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.RetryTaskResponse], error) {
				return c.tasks.RetryTask(ctx, connect.NewRequest(&v1.RetryTaskRequest{TaskId: args[0], DeviceIds: devices}))
			}, func(res *v1.RetryTaskResponse) error { return o.table(taskHeader, [][]string{taskRow(res.GetTask())}) })
		},
	}
	cmd.Flags().StringSliceVar(&devices, "device", nil, "only this device (repeat or comma-separate); default: every one that can be retried")
	return cmd
}

func taskDevices(o *clientOpts) *cobra.Command {
	var l listFlags
	var status string
	cmd := &cobra.Command{
		Use: "devices TASK_ID [--status S]", Short: "List a task's devices with their status, stage, outcome and the device's own description", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &v1.ListTaskDevicesRequest{TaskId: args[0], PageSize: l.pageSize}
			if status != "" {
				st, err := parseEnum("--status", status, "SUBTASK_STATUS_", v1.SubtaskStatus_value)
				if err != nil {
					return err
				}
				req.Status = v1.SubtaskStatus(st).Enum()
			}
			return listShow(o, cmd, &l, func(ctx context.Context, c *client, token string) (*connect.Response[v1.ListTaskDevicesResponse], error) {
				req.PageToken = token
				return c.tasks.ListTaskDevices(ctx, connect.NewRequest(req))
			}, func(all, page *v1.ListTaskDevicesResponse) string {
				all.Devices, all.NextPageToken = append(all.Devices, page.GetDevices()...), page.GetNextPageToken()
				slices.SortStableFunc(all.Devices, func(a, b *v1.TaskDevice) int { return naturalCompare(a.GetDeviceId(), b.GetDeviceId()) })
				return all.NextPageToken
			}, func(all *v1.ListTaskDevicesResponse) error {
				rows := make([][]string, len(all.Devices))
				for i, d := range all.Devices {
					rows[i] = taskDeviceRow(d)
				}
				return o.table([]string{"DEVICE", "STATUS", "STAGE", "ATTEMPTS", "SOURCE", "UPDATED", "OUTCOME", "DEVICE-DESC"}, rows)
			})
		},
	}
	cmd.Flags().StringVar(&status, "status", "", "only devices with this status: waiting, processing, success, fail, fail_wait_retry or stopped")
	l.register(cmd)
	return cmd
}

func taskDeviceRow(d *v1.TaskDevice) []string {
	stage := orDash(d.GetStage())
	if d.GetStage() != "" && d.GetProgress() > 0 {
		stage = fmt.Sprintf("%s %d%%", d.GetStage(), d.GetProgress())
	}
	outcome := orDash(d.GetStatusDesc())
	if d.GetResultCode() != 0 {
		outcome = fmt.Sprintf("%s (code %d)", outcome, d.GetResultCode())
	}
	if d.GetNextRetryTime() != nil {
		outcome += ", retry at " + fmtTime(d.GetNextRetryTime())
	}
	return []string{d.GetDeviceId(), enumName(d.GetStatus().String(), "SUBTASK_STATUS_"), stage,
		strconv.FormatUint(uint64(d.GetAttempts()), 10), orDash(d.GetSourceVersion()), fmtTime(d.GetUpdateTime()), outcome,
		orDash(d.GetDeviceDescription())}
}

func taskCells(o *clientOpts) *cobra.Command {
	var l listFlags
	cmd := &cobra.Command{
		Use:   "cells TASK_ID",
		Short: "List the radio cells where a task's devices hold or wait for upgrade slots, bottlenecks first",
		Long: `List the radio cells where a task's devices hold or wait for upgrade slots now:
each cell's budget units in use (a good device takes 1 of the default 50, a
medium or cell-ID-only one 5, a poor one all 50), its holders and its queue
(of every task: a cell's budget is shared) with their coverage mix, and how
many of them are this task's. A cell AT BUDGET has devices queued whose head
does not fit the budget left: it paces the task. Those come first, then the
cells with the longest queues. --json prints the API's answer (cells in ID
order).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &v1.ListTaskCellsRequest{TaskId: args[0], PageSize: l.pageSize}
			return listShow(o, cmd, &l, func(ctx context.Context, c *client, token string) (*connect.Response[v1.ListTaskCellsResponse], error) {
				req.PageToken = token
				return c.tasks.ListTaskCells(ctx, connect.NewRequest(req))
			}, func(all, page *v1.ListTaskCellsResponse) string {
				all.Cells, all.NextPageToken = append(all.Cells, page.GetCells()...), page.GetNextPageToken()
				return all.NextPageToken
			}, func(all *v1.ListTaskCellsResponse) error {
				cells := slices.Clone(all.Cells)
				slices.SortStableFunc(cells, compareCells)
				rows := make([][]string, len(cells))
				for i, c := range cells {
					rows[i] = taskCellRow(c)
				}
				return o.table([]string{"CELL", "STATE", "UNITS", "HOLDING", "WAITING", "HEAD-NEEDS", "HOLDING-MIX", "WAITING-MIX", "THIS-TASK"}, rows)
			})
		},
	}
	l.register(cmd)
	return cmd
}

// compareCells orders the human table: cells at their budget first, then
// longer queues, then cell IDs in natural order.
func compareCells(a, b *v1.TaskCell) int {
	if a.GetSaturated() != b.GetSaturated() {
		if a.GetSaturated() {
			return -1
		}
		return 1
	}
	if a.GetWaiting() != b.GetWaiting() {
		if a.GetWaiting() > b.GetWaiting() {
			return -1
		}
		return 1
	}
	return naturalCompare(a.GetCellId(), b.GetCellId())
}

// coverageMix is a mix as "2 good, 1 poor" (nonzero classes only), or "-".
func coverageMix(m *v1.CoverageMix) string {
	var parts []string
	for _, c := range []struct {
		n    uint32
		name string
	}{{m.GetGood(), "good"}, {m.GetMedium(), "medium"}, {m.GetPoor(), "poor"}, {m.GetCellOnly(), "cell-only"}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.name))
		}
	}
	return orDash(strings.Join(parts, ", "))
}

func taskCellRow(c *v1.TaskCell) []string {
	state := "-"
	if c.GetSaturated() {
		state = "AT BUDGET"
	}
	head := "-"
	if c.GetWaiting() > 0 {
		head = strconv.FormatUint(uint64(c.GetHeadUnits()), 10)
	}
	return []string{c.GetCellId(), state, fmt.Sprintf("%d/%d", c.GetUnitsInUse(), c.GetBudget()),
		strconv.Itoa(len(c.GetHolders())), strconv.FormatUint(uint64(c.GetWaiting()), 10), head,
		coverageMix(c.GetHoldingMix()), coverageMix(c.GetWaitingMix()),
		fmt.Sprintf("%d holding, %d waiting", c.GetTaskHolding(), c.GetTaskWaiting())}
}

// counters is a one-line summary of a task's progress.
func counters(t *v1.Task) string {
	p := t.GetProgress()
	return fmt.Sprintf("%s: success %d, fail %d, processing %d, waiting %d, retry-wait %d, stopped %d",
		taskStatusName(t.GetStatus()), p.GetSuccess(), p.GetFail(), p.GetProcessing(), p.GetWaiting(), p.GetFailWaitRetry(), p.GetStopped())
}

func taskWatch(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "watch TASK_ID",
		Short: "Follow a task until it ends, with a live progress bar",
		Long: `Follow a task until it ends. On a terminal (or with --progress always) a
progress bar counts the devices that have finished, with the counters
beside it; otherwise one line is printed per change, and with --json one
JSON object per line. Exit status: 0 when the task ended in SUCCESS, 3 when
it ended in FAIL, PARTIAL_SUCCESS or STOPPED, 1 on an error. A slow or
missing answer from the server (deadline_exceeded, unavailable) is ridden
out: the watch is opened again with backoff, up to 8 times in a row.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			var bar *progressbar.ProgressBar
			var last *v1.Task
			show := func(msg *v1.WatchTaskResponse) error {
				t := msg.GetTask()
				last = t
				p := t.GetProgress()
				done := int64(p.GetSuccess() + p.GetFail() + p.GetStopped())
				switch {
				case o.json:
					b, err := protojson.Marshal(msg)
					if err != nil {
						return err
					}
					fmt.Fprintf(o.stdout, "%s\n", b)
				case o.showProgress():
					if bar == nil {
						bar = progressbar.NewOptions64(int64(p.GetTotal()),
							progressbar.OptionSetWriter(o.stderr), progressbar.OptionShowCount(), progressbar.OptionSetWidth(30),
							progressbar.OptionSetElapsedTime(true), progressbar.OptionSetPredictTime(false),
							progressbar.OptionShowDescriptionAtLineEnd(), progressbar.OptionSetRenderBlankState(true))
					}
					bar.ChangeMax64(int64(p.GetTotal()))
					bar.Describe(counters(t))
					_ = bar.Set64(done)
				default:
					fmt.Fprintf(o.stdout, "%s %d/%d %s\n", time.Now().UTC().Format(time.TimeOnly), done, p.GetTotal(), counters(t))
				}
				return nil
			}
			err = watchStream(cmd.Context(), c.tasks, args[0], &bench.Backoff{}, show)
			if bar != nil {
				_ = bar.Finish()
				fmt.Fprintln(o.stderr)
			}
			if err != nil {
				return err
			}
			if last == nil {
				return errors.New("the server closed the watch without a state")
			}
			switch st := last.GetStatus(); {
			case st == v1.TaskStatus_TASK_STATUS_SUCCESS:
			case messages.TaskStatus(st).Final(): // the API's status converts to the vocabulary's
				if !o.json {
					fmt.Fprintf(o.stdout, "task %s ended %s\n", last.GetTaskId(), counters(last))
				}
				return &exitError{code: exitTaskNotSuccessful, err: fmt.Errorf("task %s ended %s", last.GetTaskId(), taskStatusName(last.GetStatus()))}
			default:
				return fmt.Errorf("the watch of task %s ended while it was %s", last.GetTaskId(), taskStatusName(last.GetStatus()))
			}
			if !o.json {
				fmt.Fprintf(o.stdout, "task %s ended %s\n", last.GetTaskId(), counters(last))
			}
			return nil
		},
	}
}

// watchStream follows task id's WatchTask stream, calling show for each
// message, until the stream ends without an error. A stream that fails
// transiently (bench.Transient: the server answered too slowly, or is
// restarting) is opened again after bo's delay, which a message resets; any
// other error ends the watch with it.
func watchStream(ctx context.Context, tasks otafleetv1connect.TaskServiceClient, id string, bo *bench.Backoff, show func(*v1.WatchTaskResponse) error) error {
	for {
		stream, err := tasks.WatchTask(ctx, connect.NewRequest(&v1.WatchTaskRequest{TaskId: id}))
		if err == nil {
			for stream.Receive() {
				bo.Reset()
				if err := show(stream.Msg()); err != nil {
					stream.Close()
					return err
				}
			}
			err = stream.Err()
			stream.Close()
			if err == nil {
				return nil
			}
		}
		if err := bo.Retry(ctx, err); err != nil {
			return err
		}
	}
}
