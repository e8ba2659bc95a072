package devicefsm

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/otafleet/otafleet/messages"
)

// epoch is time zero of every transcript; times print as offsets from it.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// ---- compact, stable printing of messages ----

func rel(ns int64) string {
	if ns == 0 {
		return "0"
	}
	return "+" + messages.Time(ns).Sub(epoch).String()
}

// enumName strips the enum type's own prefix: STAGE_VERSION_QUERY → VERSION_QUERY.
func enumName(fd protoreflect.FieldDescriptor, v protoreflect.EnumNumber) string {
	ev := fd.Enum().Values().ByNumber(v)
	if ev == nil {
		return strconv.Itoa(int(v))
	}
	name := string(ev.Name())
	var b strings.Builder
	for i, r := range string(fd.Enum().Name()) {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.TrimPrefix(name, strings.ToUpper(b.String())+"_")
}

// fmtMsg prints a message as name{field=value ...}; a oneof "kind" prints as
// its chosen field; device_id fields are left out (one device per transcript),
// a Job prints as task#attempt and times as offsets.
func fmtMsg(m protoreflect.Message) string {
	switch v := m.Interface().(type) {
	case *messages.Job:
		return fmt.Sprintf("%s#%d", v.GetTaskId(), v.GetAttempt())
	}
	fields := m.Descriptor().Fields()
	var parts []string
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		name := string(fd.Name())
		if name == "device_id" {
			continue
		}
		val := m.Get(fd)
		if o := fd.ContainingOneof(); o != nil && o.Name() == "kind" {
			parts = append(parts, strings.TrimSpace(string(fd.Name())+" "+strings.Trim(fmtMsg(val.Message()), "{}")))
			continue
		}
		var s string
		switch {
		case fd.IsList():
			var items []string
			for j := 0; j < val.List().Len(); j++ {
				items = append(items, fmt.Sprint(val.List().Get(j).Interface()))
			}
			s = "[" + strings.Join(items, ",") + "]"
		case fd.Kind() == protoreflect.MessageKind:
			s = fmtMsg(val.Message())
		case fd.Kind() == protoreflect.EnumKind && fd.Enum().FullName() == "otafleet.messages.v1.Reason":
			s = strconv.Quote(messages.ReasonText(messages.Reason(val.Enum())))
		case fd.Kind() == protoreflect.EnumKind:
			s = enumName(fd, val.Enum())
		case strings.HasSuffix(name, "unix_nano"):
			name = strings.TrimSuffix(strings.TrimSuffix(name, "unix_nano"), "_")
			s = rel(val.Int())
		case fd.Kind() == protoreflect.StringKind:
			s = strconv.Quote(val.String())
		default:
			s = fmt.Sprint(val.Interface())
		}
		parts = append(parts, name+"="+s)
	}
	if m.Descriptor().Oneofs().ByName("kind") != nil {
		return strings.Join(parts, " ")
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func fmtProto(m proto.Message) string { return fmtMsg(m.ProtoReflect()) }

func fmtResult(r Result) string {
	var b strings.Builder
	for _, e := range r.Events {
		e = proto.Clone(e).(*messages.DeviceEvent)
		e.AtUnixNano = 0 // always the input's time
		fmt.Fprintf(&b, "event  %s\n", fmtProto(e))
	}
	for _, e := range r.Effects {
		fmt.Fprintf(&b, "effect %s\n", fmtProto(e))
	}
	if b.Len() == 0 {
		return "ignored\n"
	}
	return b.String()
}

// dumpState is a canonical text form of a State, used to print it and to
// compare live and replayed states.
func dumpState(s State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "device=%s online=%v awake=%v queue=%v abnormal=%v\n", s.DeviceID, s.Online, s.Awake, s.QueueMode, s.Abnormal)
	fmt.Fprintf(&b, "fw=%q(%v) sw=%q(%v) radio=%+v\n", s.FwVersion, s.HasFw, s.SwVersion, s.HasSw, s.Radio)
	if s.Job != nil {
		fmt.Fprintf(&b, "job=%s stage=%s deadline=%s gen=%d cause=%s notified=%s progress=%d uri_acked=%v\n",
			fmtProto(s.Job), shortStage(s.Stage), relTime(s.Deadline), s.Generation,
			strings.TrimPrefix(s.VerifyCause.String(), "VERIFY_CAUSE_"), relTime(s.NotifiedAt), s.Progress, s.UriAcked)
		if s.UriHeld {
			b.WriteString("uri_held (the device acknowledged the job's URI)\n")
		}
		if s.PcpExecuteDue {
			b.WriteString("pcp_execute_due (the 0x17 was never sent)\n")
		}
	} else {
		fmt.Fprintf(&b, "idle stage=%s gen=%d\n", shortStage(s.Stage), s.Generation)
	}
	if s.PermitCell != "" {
		fmt.Fprintf(&b, "permit cell=%s held=%v cell_only=%v\n", s.PermitCell, s.PermitHeld, s.PermitCellOnly)
	}
	for _, dl := range s.Outbox {
		fmt.Fprintf(&b, "outbox %s\n", fmtProto(dl))
	}
	if s.Last != nil {
		fmt.Fprintf(&b, "last %s permit=%q\n", fmtProto(s.Last.Outcome), s.Last.PermitCell)
	}
	return b.String()
}

func relTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return "+" + t.Sub(epoch).String()
}

// ---- the transcript driver ----

type timer struct {
	step string
	gen  uint64
	at   time.Time
}

type harness struct {
	t       *testing.T
	cfg     Config
	s       State
	now     time.Time
	job     *messages.Job
	journal []*messages.DeviceEvent
	// batches holds the journal's length after each step that journaled
	// events: one append each, as in the actor shell.
	batches []int
	timers  []timer
}

func newHarness(t *testing.T) *harness {
	return &harness{t: t, cfg: DefaultConfig(), s: New("dev-1"), now: epoch}
}

// step runs one input, checks replay equivalence, records armed timers.
func (h *harness) step(in *messages.DeviceInput) string {
	h.t.Helper()
	in.AtUnixNano = messages.UnixNano(h.now)
	next, res, err := Step(h.cfg, h.s, in)
	if err != nil {
		return "error: " + err.Error() + "\n"
	}
	h.s = next
	h.journal = append(h.journal, res.Events...)
	if len(res.Events) > 0 {
		h.batches = append(h.batches, len(h.journal))
	}
	h.checkReplay()
	for _, e := range res.Effects {
		if a := e.GetArmDeadline(); a != nil {
			// Like the actor shell: one timer per device; arming replaces it.
			h.timers = []timer{{a.GetStep(), a.GetGeneration(), messages.Time(a.GetAtUnixNano())}}
		}
	}
	return fmtResult(res)
}

func (h *harness) replay() State {
	s := New(h.s.DeviceID)
	for _, e := range h.journal {
		s = Evolve(s, e)
	}
	return s
}

func (h *harness) checkReplay() {
	h.t.Helper()
	if live, replayed := dumpState(h.s), dumpState(h.replay()); live != replayed {
		h.t.Fatalf("replay differs from live state\nlive:\n%s\nreplayed:\n%s", live, replayed)
	}
}

// advance moves time forward, firing every armed timer that falls due, in order.
func (h *harness) advance(d time.Duration) string {
	end := h.now.Add(d)
	var b strings.Builder
	for {
		sort.SliceStable(h.timers, func(i, j int) bool { return h.timers[i].at.Before(h.timers[j].at) })
		if len(h.timers) == 0 || h.timers[0].at.After(end) {
			break
		}
		tm := h.timers[0]
		h.timers = h.timers[1:]
		if tm.at.After(h.now) { // a timer armed in the past fires now
			h.now = tm.at
		}
		fmt.Fprintf(&b, "fire %s gen=%d at %s\n", strings.TrimPrefix(tm.step, "STAGE_"), tm.gen, relTime(h.now))
		b.WriteString(indent(h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_DeadlineFired{
			DeadlineFired: &messages.DeadlineFired{Step: tm.step, Generation: tm.gen}}})))
	}
	h.now = end
	if b.Len() == 0 {
		return "no timer due\n"
	}
	return b.String()
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ") + "\n"
}

func args(d *datadriven.TestData) map[string]string {
	m := map[string]string{}
	for _, a := range d.CmdArgs {
		m[a.Key] = strings.Join(a.Vals, ",")
	}
	return m
}

func has(m map[string]string, k string) bool { _, ok := m[k]; return ok }

func i32(t *testing.T, m map[string]string, k string) *int32 {
	v, ok := m[k]
	if !ok {
		return nil
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		t.Fatalf("%s=%q: %v", k, v, err)
	}
	x := int32(n)
	return &x
}

func u32(t *testing.T, m map[string]string, k string) uint32 {
	p := i32(t, m, k)
	if p == nil {
		return 0
	}
	return uint32(*p)
}

func str(m map[string]string, k string) *string {
	v, ok := m[k]
	if !ok {
		return nil
	}
	return &v
}

var protocols = map[string]messages.Protocol{"mqtt": protoMQTT, "fota": protoFOTA, "pcp": protoPCP}

func (h *harness) run(d *datadriven.TestData) string {
	t := h.t
	a := args(d)
	if v, ok := a["at"]; ok && d.Cmd != "advance" {
		dur, err := time.ParseDuration(strings.TrimPrefix(v, "+"))
		if err != nil {
			t.Fatalf("%s: at=%q: %v", d.Pos, v, err)
		}
		if out := h.advance(dur); out != "no timer due\n" {
			return out + "then:\n" + indent(h.dispatch(d, a))
		}
	}
	return h.dispatch(d, a)
}

func (h *harness) dispatch(d *datadriven.TestData, a map[string]string) string {
	t := h.t
	switch d.Cmd {
	case "config":
		for k, v := range a {
			dur, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("%s: %s=%q: %v", d.Pos, k, v, err)
			}
			switch k {
			case "online":
				h.cfg.Online = dur
			case "online-mqtt":
				h.cfg.OnlineMQTT = dur
			case "update-result":
				h.cfg.UpdateResult = dur
			default:
				t.Fatalf("%s: unknown config %q", d.Pos, k)
			}
		}
		return "ok\n"
	case "job":
		p, ok := protocols[a["protocol"]]
		if !ok {
			t.Fatalf("%s: protocol=mqtt|fota|pcp", d.Pos)
		}
		tt := messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE
		if a["type"] == "sw" || p == protoPCP {
			tt = messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE
		}
		pkg := &messages.Package{PackageId: "pkg-1", Version: a["target"], Size: 1000, FileName: "fw.bin", SegmentSize: 500, CheckCode: 0x1234}
		if v, ok := a["sources"]; ok {
			pkg.SourceVersions = strings.Split(v, ",")
		}
		if v := i32(t, a, "size"); v != nil {
			pkg.Size = int64(*v)
		}
		if v := i32(t, a, "segment"); v != nil {
			pkg.SegmentSize = uint32(*v)
		}
		h.job = &messages.Job{TaskId: "task-1", Attempt: 1, TaskType: tt, Protocol: p, Package: pkg, SkipVersionCheck: has(a, "skip-check")}
		return "ok\n"
	case "start":
		j := proto.Clone(h.job).(*messages.Job)
		if v, ok := a["task"]; ok {
			j.TaskId = v
		}
		if v := i32(t, a, "attempt"); v != nil {
			j.Attempt = uint32(*v)
		}
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_StartJob{StartJob: &messages.StartJob{DeviceId: h.s.DeviceID, Job: j}}})
	case "stop":
		task := "task-1"
		if v, ok := a["task"]; ok {
			task = v
		}
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_StopJob{StopJob: &messages.StopJob{DeviceId: h.s.DeviceID, TaskId: task}}})
	case "grant":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_PermitGranted{PermitGranted: &messages.PermitGranted{CellId: a["cell"], DeviceId: h.s.DeviceID}}})
	case "fire":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: "STAGE_" + a["step"], Generation: uint64(u32(t, a, "gen"))}}})
	case "abnormal":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_SetAbnormal{SetAbnormal: &messages.SetAbnormal{Abnormal: !has(a, "off")}}})
	case "connected":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{QueueMode: has(a, "queue")}}})
	case "disconnected":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_Disconnected{Disconnected: &messages.Disconnected{}}})
	case "uplink":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{RegistrationUpdate: has(a, "update")}}})
	case "asleep":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_Asleep{Asleep: &messages.Asleep{}}})
	case "version":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: str(a, "fw"), SwVersion: str(a, "sw")}}})
	case "radio":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_RadioReported{RadioReported: &messages.RadioReported{Rsrp: i32(t, a, "rsrp"), Sinr: i32(t, a, "sinr"), CellId: a["cell"]}}})
	case "response":
		op := map[string]messages.Lwm2MOp{"read": messages.Lwm2MOp_LWM2M_OP_READ, "write": messages.Lwm2MOp_LWM2M_OP_WRITE,
			"execute": messages.Lwm2MOp_LWM2M_OP_EXECUTE, "observe": messages.Lwm2MOp_LWM2M_OP_OBSERVE}[a["op"]]
		code := a["code"]
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{
			Op: op, Path: a["path"], Success: strings.HasPrefix(code, "2."), Code: code, PcpCode: u32(t, a, "pcp"), FotaReset: has(a, "reset"),
		}}})
	case "fota":
		// noack: an answer to the server's request (a read, an
		// observation's first value), as the transports mark it.
		// tag=N: the tag of the read it answers, as the transports echo it.
		return h.step(&messages.DeviceInput{NoAck: has(a, "noack"), RequestTag: uint64(u32(t, a, "tag")), Kind: &messages.DeviceInput_FotaStatus{FotaStatus: &messages.FotaStatus{State: i32(t, a, "state"), UpdateResult: i32(t, a, "result")}}})
	case "progress":
		c := i32(t, a, "code")
		if c == nil {
			c = new(int32)
		}
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_MqttProgress{MqttProgress: &messages.MqttProgress{ResultCode: *c, Progress: i32(t, a, "pct"), Version: a["version"], Description: a["desc"]}}})
	case "served":
		task := "task-1"
		if v, ok := a["task"]; ok {
			task = v
		}
		num := func(k string) int64 {
			if p := i32(t, a, k); p != nil {
				return int64(*p)
			}
			return 0
		}
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_DownloadServed{DownloadServed: &messages.DownloadServed{
			TaskId: task, Attempt: u32(t, a, "attempt"), Offset: num("offset"), Bytes: num("bytes"), Size: num("size"),
		}}})
	case "offered":
		task := "task-1"
		if v, ok := a["task"]; ok {
			task = v
		}
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_DownloadOffered{DownloadOffered: &messages.DownloadOffered{
			TaskId: task, Attempt: u32(t, a, "attempt"), Uri: a["uri"], Token: a["token"],
		}}})
	case "pcp-version":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_PcpVersion{PcpVersion: &messages.PcpVersion{Result: u32(t, a, "result"), Version: a["version"]}}})
	case "pcp-notify-rsp":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_PcpNotifyResponse{PcpNotifyResponse: &messages.PcpNotifyResponse{Result: u32(t, a, "result")}}})
	case "pcp-segment":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_PcpSegmentRequest{PcpSegmentRequest: &messages.PcpSegmentRequest{Version: a["version"], SegmentNo: u32(t, a, "no")}}})
	case "pcp-download":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_PcpDownloadResult{PcpDownloadResult: &messages.PcpDownloadResult{Status: u32(t, a, "status")}}})
	case "pcp-execute-rsp":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_PcpExecuteResponse{PcpExecuteResponse: &messages.PcpExecuteResponse{Result: u32(t, a, "result")}}})
	case "pcp-result":
		return h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_PcpUpgradeResult{PcpUpgradeResult: &messages.PcpUpgradeResult{Result: u32(t, a, "result"), Version: a["version"]}}})
	case "advance":
		dur, err := time.ParseDuration(d.CmdArgs[0].Key)
		if err != nil {
			t.Fatalf("%s: advance DURATION: %v", d.Pos, err)
		}
		return h.advance(dur)
	case "state":
		return dumpState(h.s)
	case "crash":
		// Rebuild from the journal alone and print what Resume redoes; its
		// deadline replaces the timer, as in the actor shell. lose=N: the
		// crash takes the last N appends, which must be ones the shell
		// writes unsynced (none of their events MustSync; the transcript
		// loses only steps of inputs nobody waits for: answers, deadlines,
		// other actors' messages).
		var b strings.Builder
		if n := int(u32(t, a, "lose")); n > 0 {
			if n > len(h.batches) {
				t.Fatalf("%s: lose=%d: only %d appends", d.Pos, n, len(h.batches))
			}
			keep := 0
			if k := len(h.batches) - n; k > 0 {
				keep = h.batches[k-1]
			}
			for _, e := range h.journal[keep:] {
				if e.MustSync() {
					t.Fatalf("%s: lose=%d takes %s, which is synced", d.Pos, n, fmtProto(e))
				}
				e = proto.Clone(e).(*messages.DeviceEvent)
				e.AtUnixNano = 0
				fmt.Fprintf(&b, "lost   %s\n", fmtProto(e))
			}
			h.journal, h.batches = h.journal[:keep], h.batches[:len(h.batches)-n]
		}
		h.s = h.replay()
		for _, e := range Resume(h.s) {
			if a := e.GetArmDeadline(); a != nil {
				h.timers = []timer{{a.GetStep(), a.GetGeneration(), messages.Time(a.GetAtUnixNano())}}
			}
			fmt.Fprintf(&b, "effect %s\n", fmtProto(e))
		}
		if b.Len() == 0 {
			return "nothing to resume\n"
		}
		return b.String()
	}
	t.Fatalf("%s: unknown command %q", d.Pos, d.Cmd)
	return ""
}

func TestTranscripts(t *testing.T) {
	datadriven.Walk(t, "testdata/scenarios", func(t *testing.T, path string) {
		h := newHarness(t)
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			h.t = t
			return h.run(d)
		})
	})
}
