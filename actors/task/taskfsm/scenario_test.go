package taskfsm

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/otafleet/otafleet/messages"
)

// scenarioStart is "now" when a transcript begins (a Sunday, 08:00 in Shanghai).
var scenarioStart = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// TestScenarios runs the transcripts in testdata/scenarios. The DSL:
//
//	config [max-in-flight=N] [max-targets=N]
//	create [task=ID] [devices=a,b] [n-devices=N] [members=x,y] [groups=g] [type=firmware|software|none|N]
//	       [protocol=mqtt|fota|pcp|none|N] [package=ID] [version=V] [skip-version-check]
//	       [retry=N] [interval=MIN] [schedule=+DUR|-DUR|RFC3339] [window=HH:MM-HH:MM] [tz=ZONE] [at=T]
//	outcome dev=ID status=success|fail|stopped [attempt=N] [reason=NAME] [detail=TEXT] [desc=TEXT] [task=ID] [at=T]
//	stop [at=T]
//	retry [devs=a,b] [at=T]
//	wake [gen=N] [step=S] [at=T]   (defaults: the armed generation, at the armed time if later)
//	state                          (status, counters, wake, every sub-task)
//	reset                          (forget the task; config and time stay)
//	resume                         (the effects of Resume)
//
// T is +DUR (after the previous input; DUR may use d for days) or RFC3339;
// without at= an input happens at the previous input's time. Each input
// prints its events and effects, or "error: ..." or "ignored", then the status.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata/scenarios", func(t *testing.T, path string) {
		r := &runner{cfg: DefaultConfig(), now: scenarioStart}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return r.run(t, d)
		})
	})
}

type runner struct {
	cfg Config
	s   State
	now time.Time
}

func parseDur(t *testing.T, v string) time.Duration {
	t.Helper()
	neg := strings.HasPrefix(v, "-")
	v = strings.TrimLeft(v, "+-")
	var d time.Duration
	if days, rest, ok := strings.Cut(v, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			t.Fatalf("bad days in %q", v)
		}
		d = time.Duration(n) * 24 * time.Hour
		v = rest
	}
	if v != "" {
		x, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("bad duration %q: %v", v, err)
		}
		d += x
	}
	if neg {
		d = -d
	}
	return d
}

func (r *runner) parseTime(t *testing.T, v string) time.Time {
	t.Helper()
	if strings.HasPrefix(v, "+") || strings.HasPrefix(v, "-") {
		return r.now.Add(parseDur(t, v))
	}
	x, err := time.Parse(time.RFC3339, v)
	if err != nil {
		t.Fatalf("bad time %q: %v", v, err)
	}
	return x
}

func args(d *datadriven.TestData) map[string]string {
	m := map[string]string{}
	for _, a := range d.CmdArgs {
		m[a.Key] = strings.Join(a.Vals, ",")
	}
	return m
}

func list(v string) []string {
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

func atoi(t *testing.T, v string) int {
	t.Helper()
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("bad number %q", v)
	}
	return n
}

func parseMinute(t *testing.T, v string) uint32 {
	t.Helper()
	h, m, ok := strings.Cut(v, ":")
	if !ok {
		t.Fatalf("bad time of day %q", v)
	}
	return uint32(atoi(t, h)*60 + atoi(t, m))
}

func enumArg[E ~int32](t *testing.T, v string, names map[string]E) E {
	t.Helper()
	if e, ok := names[v]; ok {
		return e
	}
	return E(atoi(t, v))
}

func (r *runner) run(t *testing.T, d *datadriven.TestData) string {
	a := args(d)
	if v, ok := a["at"]; ok {
		r.now = r.parseTime(t, v)
	}
	in := &messages.TaskInput{}
	switch d.Cmd {
	case "config":
		cfg := r.cfg
		if v, ok := a["max-in-flight"]; ok {
			cfg.MaxInFlight = atoi(t, v)
		}
		if v, ok := a["max-targets"]; ok {
			cfg.MaxTargets = atoi(t, v)
		}
		if err := cfg.Validate(); err != nil {
			return "error: " + err.Error() + "\n"
		}
		r.cfg = cfg
		return fmt.Sprintf("%+v\n", r.cfg)
	case "state":
		return r.state()
	case "reset":
		r.s = State{}
		return "ok\n"
	case "resume":
		var b strings.Builder
		for _, e := range Resume(r.s) {
			fmt.Fprintf(&b, "effect: %s\n", fmtEffect(e))
		}
		if b.Len() == 0 {
			return "no effects\n"
		}
		return b.String()
	case "create":
		in.Kind = &messages.TaskInput_Create{Create: r.create(t, a)}
	case "outcome":
		in.Kind = &messages.TaskInput_Outcome{Outcome: r.outcome(t, a)}
	case "stop":
		in.Kind = &messages.TaskInput_Stop{Stop: &messages.StopTask{}}
	case "retry":
		in.Kind = &messages.TaskInput_Retry{Retry: &messages.RetryTask{DeviceIds: list(a["devs"])}}
	case "wake":
		at, gen := r.s.Wake()
		if _, ok := a["at"]; !ok && at.After(r.now) {
			r.now = at
		}
		step := WakeStep
		if v, ok := a["step"]; ok {
			step = v
		}
		if v, ok := a["gen"]; ok {
			gen = uint64(atoi(t, v))
		}
		in.Kind = &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: step, Generation: gen}}
	default:
		t.Fatalf("unknown command %q", d.Cmd)
	}
	in.AtUnixNano = r.now.UnixNano()
	ns, res, err := step(t, r.cfg, r.s, in)
	r.s = ns
	var b strings.Builder
	fmt.Fprintf(&b, "at %s\n", r.now.Format(time.RFC3339))
	switch {
	case err != nil:
		fmt.Fprintf(&b, "error: %v\n", err)
	case len(res.Events)+len(res.Effects) == 0:
		b.WriteString("ignored\n")
	default:
		fmtResult(&b, res)
	}
	b.WriteString(fmtProgress(r.s) + "\n")
	return b.String()
}

func (r *runner) state() string {
	var b strings.Builder
	b.WriteString(fmtProgress(r.s) + "\n")
	if at, gen := r.s.Wake(); !at.IsZero() {
		fmt.Fprintf(&b, "wake: %s gen=%d\n", at.Format(time.RFC3339), gen)
	} else {
		fmt.Fprintf(&b, "wake: none gen=%d\n", gen)
	}
	if c, f := r.s.CreatedAt(), r.s.FinishedAt(); !c.IsZero() {
		fin := "-"
		if !f.IsZero() {
			fin = f.Format(time.RFC3339)
		}
		fmt.Fprintf(&b, "created: %s finished: %s\n", c.Format(time.RFC3339), fin)
	}
	subs := r.s.Subtasks(0, 0)
	if len(subs) > 20 {
		fmt.Fprintf(&b, "(%d sub-tasks)\n", len(subs))
		return b.String()
	}
	for _, st := range subs {
		b.WriteString(fmtSubtask(st) + "\n")
	}
	return b.String()
}

var (
	taskTypes = map[string]messages.TaskType{"none": 0, "firmware": messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE,
		"software": messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE}
	protocols = map[string]messages.Protocol{"none": 0, "mqtt": messages.Protocol_PROTOCOL_MQTT,
		"fota": messages.Protocol_PROTOCOL_LWM2M_FOTA, "pcp": messages.Protocol_PROTOCOL_LWM2M_PCP}
	statuses = map[string]messages.SubtaskStatus{"success": messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS,
		"fail": messages.SubtaskStatus_SUBTASK_STATUS_FAIL, "stopped": messages.SubtaskStatus_SUBTASK_STATUS_STOPPED,
		"waiting": messages.SubtaskStatus_SUBTASK_STATUS_WAITING}
)

func getOr(a map[string]string, k, def string) string {
	if v, ok := a[k]; ok {
		return v
	}
	return def
}

func (r *runner) create(t *testing.T, a map[string]string) *messages.CreateTask {
	c := &messages.CreateTask{
		TaskId:           getOr(a, "task", "t1"),
		Name:             "scenario",
		TaskType:         enumArg(t, getOr(a, "type", "firmware"), taskTypes),
		Protocol:         enumArg(t, getOr(a, "protocol", "mqtt"), protocols),
		Package:          &messages.Package{PackageId: getOr(a, "package", "p1"), Version: getOr(a, "version", "2.0")},
		SkipVersionCheck: a["skip-version-check"] != "" || hasKey(a, "skip-version-check"),
		DeviceIds:        list(a["devices"]),
		GroupIds:         list(a["groups"]),
		GroupMembers:     list(a["members"]),
	}
	if v, ok := a["n-devices"]; ok {
		for i := range atoi(t, v) {
			c.DeviceIds = append(c.DeviceIds, fmt.Sprintf("d%05d", i+1))
		}
	}
	if hasKey(a, "retry") || hasKey(a, "interval") || hasKey(a, "schedule") || hasKey(a, "window") {
		c.Policy = &messages.Policy{}
		if v, ok := a["retry"]; ok {
			c.Policy.RetryCount = uint32(atoi(t, v))
		}
		if v, ok := a["interval"]; ok {
			c.Policy.RetryIntervalMinutes = uint32(atoi(t, v))
		}
		if v, ok := a["schedule"]; ok {
			c.Policy.ScheduleTimeUnixNano = r.parseTime(t, v).UnixNano()
		}
		if v, ok := a["window"]; ok {
			from, to, _ := strings.Cut(v, "-")
			c.Policy.Window = &messages.Window{StartMinute: parseMinute(t, from), EndMinute: parseMinute(t, to), TimeZone: a["tz"]}
		}
	}
	return c
}

func hasKey(a map[string]string, k string) bool { _, ok := a[k]; return ok }

func (r *runner) outcome(t *testing.T, a map[string]string) *messages.ReportOutcome {
	o := &messages.ReportOutcome{
		TaskId:   getOr(a, "task", r.s.TaskID()),
		DeviceId: a["dev"],
		Status:   enumArg(t, getOr(a, "status", "success"), statuses),
		Detail:   a["detail"],
		// source=V: the version the device's version check read.
		SourceVersion: a["source"],
		// desc=TEXT: the description of the MQTT report that ended the attempt.
		DeviceDescription: a["desc"],
	}
	if st, ok := r.s.Subtask(o.DeviceId); ok {
		o.Attempt = st.Attempt
	}
	if v, ok := a["attempt"]; ok {
		o.Attempt = uint32(atoi(t, v))
	}
	if v, ok := a["reason"]; ok {
		rv, ok := messages.Reason_value["REASON_"+strings.ToUpper(v)]
		if !ok {
			t.Fatalf("unknown reason %q", v)
		}
		o.Reason = messages.Reason(rv)
	}
	return o
}
