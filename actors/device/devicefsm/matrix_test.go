package devicefsm

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/internal/goldentest"
	"github.com/otafleet/otafleet/messages"
)

// stateClass is one row group of the (state × input) matrix.
type stateClass struct {
	name string
	s    State
}

var testPkg = &messages.Package{PackageId: "pkg-1", Version: "2.0", Size: 1000, SegmentSize: 500, CheckCode: 7, SourceVersions: []string{"1.0"}}

func testJob(p messages.Protocol) *messages.Job {
	tt := messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE
	if p == protoPCP {
		tt = messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE
	}
	return &messages.Job{TaskId: "task-1", Attempt: 1, TaskType: tt, Protocol: p, Package: testPkg}
}

// stagesOf lists the stages a flow passes through.
func stagesOf(p messages.Protocol) []messages.Stage {
	if p == protoMQTT {
		return []messages.Stage{stWaitOnline, stVersion, stNotified, stDownloading}
	}
	return []messages.Stage{stWaitOnline, stVersion, stRadio, stCell, stWaitPermit, stNotified, stDownloading, stDownloaded, stUpgrading, stVerifying}
}

func stateClasses() []stateClass {
	now := epoch
	idle := New("dev-1")
	online := idle
	online.Online, online.Awake = true, true
	asleep := online
	asleep.QueueMode, asleep.Awake = true, false
	afterPCP := online
	afterPCP.Last = &Last{Protocol: protoPCP, Outcome: &messages.ReportOutcome{TaskId: "task-0", DeviceId: "dev-1", Attempt: 1, Status: statusSuccess}}
	abnormal := online
	abnormal.Abnormal = true
	classes := []stateClass{
		{"idle/offline", idle}, {"idle/online", online}, {"idle/queue-asleep", asleep},
		{"idle/after-pcp-job", afterPCP}, {"idle/abnormal", abnormal},
	}
	for _, p := range []messages.Protocol{protoMQTT, protoFOTA, protoPCP} {
		for _, st := range stagesOf(p) {
			s := online
			if st == stWaitOnline {
				s = idle
			}
			s.Job = testJob(p)
			s.Stage = st
			s.Generation = 3
			if st != stWaitPermit {
				s.Deadline = now.Add(time.Minute)
			}
			if st >= stWaitPermit && p != protoMQTT {
				s.PermitCell = "c1"
				s.PermitHeld = st >= stNotified
				s.Radio = Radio{RSRP: -90, SINR: 10, HasRSRP: true, HasSINR: true, CellID: "c1"}
			}
			if st >= stNotified {
				s.NotifiedAt = now.Add(-time.Minute)
				s.UriAcked = true
			}
			if st == stVerifying {
				s.VerifyCause = causeResult
			}
			classes = append(classes, stateClass{fmt.Sprintf("%s/%s", strings.ToLower(strings.TrimPrefix(p.String(), "PROTOCOL_")), shortStage(st)), s})
			if p == protoPCP && st == stDownloaded {
				due := s
				due.PcpExecuteDue = true // the 0x16 acknowledged, the 0x17 not yet sent
				classes = append(classes, stateClass{"lwm2m_pcp/DOWNLOADED-due", due})
			}
		}
	}
	return classes
}

func i32p(v int32) *int32   { return &v }
func strp(v string) *string { return &v }

// sample returns a representative input of kind name for state s.
func sample(name string, s State) *messages.DeviceInput {
	in := &messages.DeviceInput{AtUnixNano: messages.UnixNano(epoch.Add(30 * time.Second))}
	switch name {
	case "start_job":
		j := testJob(protoFOTA)
		j.TaskId = "task-2"
		if s.Job != nil {
			j.Protocol, j.TaskType = s.Job.Protocol, s.Job.TaskType
		}
		in.Kind = &messages.DeviceInput_StartJob{StartJob: &messages.StartJob{DeviceId: "dev-1", Job: j}}
	case "stop_job":
		in.Kind = &messages.DeviceInput_StopJob{StopJob: &messages.StopJob{DeviceId: "dev-1", TaskId: "task-1"}}
	case "permit_granted":
		in.Kind = &messages.DeviceInput_PermitGranted{PermitGranted: &messages.PermitGranted{CellId: "c1", DeviceId: "dev-1"}}
	case "deadline_fired":
		in.Kind = &messages.DeviceInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: DeadlineStep(s.Stage), Generation: s.Generation}}
		in.AtUnixNano = messages.UnixNano(s.Deadline)
		if s.Deadline.IsZero() {
			in.AtUnixNano = messages.UnixNano(epoch.Add(time.Hour))
		}
	case "set_abnormal":
		in.Kind = &messages.DeviceInput_SetAbnormal{SetAbnormal: &messages.SetAbnormal{Abnormal: true}}
	case "connected":
		in.Kind = &messages.DeviceInput_Connected{Connected: &messages.Connected{}}
	case "disconnected":
		in.Kind = &messages.DeviceInput_Disconnected{Disconnected: &messages.Disconnected{}}
	case "uplink":
		in.Kind = &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{}}
	case "asleep":
		in.Kind = &messages.DeviceInput_Asleep{Asleep: &messages.Asleep{}}
	case "version_reported":
		in.Kind = &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: strp("1.0"), SwVersion: strp("1.0")}}
	case "radio_reported":
		in.Kind = &messages.DeviceInput_RadioReported{RadioReported: &messages.RadioReported{Rsrp: i32p(-100), Sinr: i32p(5), CellId: "c1"}}
	case "lwm2m_response":
		in.Kind = &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{Op: messages.Lwm2MOp_LWM2M_OP_READ, Path: messages.PathConnMon, Code: "4.04"}}
		if s.PcpExecuteDue { // the answer the due 0x17 waits for
			in.Kind = &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{
				Op: messages.Lwm2MOp_LWM2M_OP_WRITE, Path: messages.PathPCPDownlink, Success: true, Code: "2.04", PcpCode: uint32(messages.PcpCodeReportDownloadResult)}}
		}
	case "fota_status":
		in.Kind = &messages.DeviceInput_FotaStatus{FotaStatus: &messages.FotaStatus{State: i32p(2)}}
	case "mqtt_progress":
		in.Kind = &messages.DeviceInput_MqttProgress{MqttProgress: &messages.MqttProgress{Progress: i32p(50), Version: "1.0"}}
	case "download_served":
		in.Kind = &messages.DeviceInput_DownloadServed{DownloadServed: &messages.DownloadServed{TaskId: "task-1", Attempt: 1, Offset: 0, Bytes: 100, Size: 1000}}
	case "download_offered":
		in.Kind = &messages.DeviceInput_DownloadOffered{DownloadOffered: &messages.DownloadOffered{TaskId: "task-1", Attempt: 1, Uri: "coap://127.0.0.1:5683/fw/pkg?t=tok", Token: "tok"}}
	case "pcp_version":
		in.Kind = &messages.DeviceInput_PcpVersion{PcpVersion: &messages.PcpVersion{Version: "1.0"}}
	case "pcp_notify_response":
		in.Kind = &messages.DeviceInput_PcpNotifyResponse{PcpNotifyResponse: &messages.PcpNotifyResponse{Result: 1}}
	case "pcp_segment_request":
		in.Kind = &messages.DeviceInput_PcpSegmentRequest{PcpSegmentRequest: &messages.PcpSegmentRequest{Version: "2.0", SegmentNo: 1}}
	case "pcp_download_result":
		in.Kind = &messages.DeviceInput_PcpDownloadResult{PcpDownloadResult: &messages.PcpDownloadResult{}}
	case "pcp_execute_response":
		in.Kind = &messages.DeviceInput_PcpExecuteResponse{PcpExecuteResponse: &messages.PcpExecuteResponse{}}
	case "pcp_upgrade_result":
		in.Kind = &messages.DeviceInput_PcpUpgradeResult{PcpUpgradeResult: &messages.PcpUpgradeResult{Version: "2.0"}}
	default:
		return nil
	}
	return in
}

func inputKinds() []string {
	fields := (&messages.DeviceInput{}).ProtoReflect().Descriptor().Oneofs().ByName("kind").Fields()
	var names []string
	for i := 0; i < fields.Len(); i++ {
		names = append(names, string(fields.Get(i).Name()))
	}
	return names
}

// classify runs one Step (failing the test on a panic) and describes its outcome.
func classify(t *testing.T, cls stateClass, kind string) (line string) {
	t.Helper()
	in := sample(kind, cls.s)
	if in == nil {
		t.Fatalf("input kind %q has no sample: add one to sample()", kind)
	}
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("%s × %s panicked: %v", cls.name, kind, r)
		}
	}()
	before := dumpState(cls.s)
	s := cloneState(cls.s)
	next, res, err := Step(DefaultConfig(), s, in)
	switch {
	case err != nil:
		if !errors.Is(err, ErrInvalidInput) {
			t.Errorf("%s × %s: error %v does not wrap ErrInvalidInput", cls.name, kind, err)
		}
		if dumpState(next) != before {
			t.Errorf("%s × %s: state changed on error", cls.name, kind)
		}
		return "error: " + err.Error()
	case len(res.Events) == 0 && len(res.Effects) == 0:
		if dumpState(next) != before {
			t.Errorf("%s × %s: state changed with no events", cls.name, kind)
		}
		return "ignored"
	}
	// Replay equivalence: the prior state folded with the events is the new state.
	replayed := cloneState(cls.s)
	for _, e := range res.Events {
		replayed = Evolve(replayed, e)
	}
	if dumpState(replayed) != dumpState(next) {
		t.Errorf("%s × %s: replay differs\nlive:\n%s\nreplayed:\n%s", cls.name, kind, dumpState(next), dumpState(replayed))
	}
	checkInvariants(t, next, res)
	if len(res.Events) == 0 {
		return "effects-only: " + effectKinds(res)
	}
	out := "transition"
	switch {
	case next.Job == nil && cls.s.Job != nil:
		o := next.Last.Outcome
		out += fmt.Sprintf(" -> %s %q", strings.TrimPrefix(o.GetStatus().String(), "SUBTASK_STATUS_"), messages.ReasonText(o.GetReason()))
	case next.Job != nil && (cls.s.Job == nil || next.Stage != cls.s.Stage):
		out += " -> " + shortStage(next.Stage)
	}
	if e := effectKinds(res); e != "" {
		out += "; " + e
	}
	return out
}

func effectKinds(r Result) string {
	var k []string
	for _, e := range r.Effects {
		name := string(e.ProtoReflect().WhichOneof(e.ProtoReflect().Descriptor().Oneofs().ByName("kind")).Name())
		if dl := e.GetDownlink(); dl != nil {
			name = string(dl.ProtoReflect().WhichOneof(dl.ProtoReflect().Descriptor().Oneofs().ByName("kind")).Name())
		}
		k = append(k, name)
	}
	return strings.Join(k, ",")
}

func cloneState(s State) State {
	s.Outbox = append([]*messages.Downlink(nil), s.Outbox...)
	return s
}

// checkInvariants holds after every step.
func checkInvariants(t *testing.T, s State, r Result) {
	t.Helper()
	if s.Job == nil {
		if s.Stage != stIdle || s.PermitCell != "" || !s.Deadline.IsZero() {
			t.Errorf("idle device keeps job state: %s", dumpState(s))
		}
	} else {
		if s.Stage == stIdle {
			t.Errorf("active job in stage IDLE: %s", dumpState(s))
		}
		if s.PermitHeld && s.Stage < stNotified {
			t.Errorf("slot held before the notification: %s", dumpState(s))
		}
	}
	finished, reported := 0, 0
	for _, e := range r.Events {
		if e.GetJobFinished() != nil || e.GetJobRejected() != nil {
			finished++
		}
	}
	for _, e := range r.Effects {
		if e.GetReportOutcome() != nil {
			reported++
		}
	}
	repeat := finished == 0 && len(r.Events) == 0 && reported == 1 && s.Last != nil &&
		proto.Equal(r.Effects[0].GetReportOutcome(), s.Last.Outcome)
	if finished != reported && !repeat {
		t.Errorf("%d jobs ended but %d outcomes reported", finished, reported)
	}
}

// TestMatrix exercises every (state, input kind) pair and compares the table
// with testdata/matrix.txt (regenerate with -rewrite).
func TestMatrix(t *testing.T) {
	var b strings.Builder
	b.WriteString("# Every (state, input) pair of devicefsm: transition, effects-only, ignored or error.\n")
	b.WriteString("# Generated by TestMatrix; regenerate with: go test ./actors/device/devicefsm -run TestMatrix -rewrite\n")
	for _, cls := range stateClasses() {
		for _, kind := range inputKinds() {
			fmt.Fprintf(&b, "%-22s %-21s %s\n", cls.name, kind, classify(t, cls, kind))
		}
	}
	goldentest.Check(t, "testdata/matrix.txt", b.String())
}

// TestRandomWalk feeds long random input sequences: no panic, replay equals
// live state, invariants hold, every error wraps ErrInvalidInput.
func TestRandomWalk(t *testing.T) {
	kinds := inputKinds()
	for seed := uint64(1); seed <= 8; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed*7919))
		h := newHarness(t)
		for step := 0; step < 3000; step++ {
			h.now = h.now.Add(time.Duration(rng.IntN(300)) * time.Second)
			in := randomInput(rng, kinds[rng.IntN(len(kinds))], h.s)
			in.AtUnixNano = messages.UnixNano(h.now)
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("seed %d step %d: panic on %v: %v", seed, step, in, r)
					}
				}()
				next, res, err := Step(h.cfg, h.s, in)
				if err != nil {
					if !errors.Is(err, ErrInvalidInput) {
						t.Fatalf("seed %d step %d: %v", seed, step, err)
					}
					return
				}
				h.s = next
				h.journal = append(h.journal, res.Events...)
				checkInvariants(t, h.s, res)
			}()
		}
		h.checkReplay()
		// Resume never panics and re-arms the current deadline.
		eff := Resume(h.replay())
		if h.s.Job != nil && !h.s.Deadline.IsZero() && (len(eff) == 0 || eff[0].GetArmDeadline() == nil) {
			t.Errorf("seed %d: Resume did not re-arm the deadline of %s", seed, shortStage(h.s.Stage))
		}
	}
}

func randomInput(rng *rand.Rand, kind string, s State) *messages.DeviceInput {
	in := sample(kind, s)
	versions := []string{"1.0", "2.0", "0.9", ""}
	pick := func() string { return versions[rng.IntN(len(versions))] }
	switch k := in.Kind.(type) {
	case *messages.DeviceInput_StartJob:
		k.StartJob.Job = testJob([]messages.Protocol{protoMQTT, protoFOTA, protoPCP}[rng.IntN(3)])
		k.StartJob.Job.TaskId = fmt.Sprintf("task-%d", rng.IntN(3))
		k.StartJob.Job.Attempt = uint32(1 + rng.IntN(3))
	case *messages.DeviceInput_DeadlineFired:
		if rng.IntN(4) == 0 {
			k.DeadlineFired.Generation = uint64(rng.IntN(5))
		}
	case *messages.DeviceInput_FotaStatus:
		k.FotaStatus.State = i32p(int32(rng.IntN(5)) - 1)
		if rng.IntN(2) == 0 {
			k.FotaStatus.UpdateResult = i32p(int32(rng.IntN(13)))
		}
	case *messages.DeviceInput_MqttProgress:
		k.MqttProgress.ResultCode = int32([]int{0, 0, 0, 3, 7, 255}[rng.IntN(6)])
		k.MqttProgress.Progress = i32p(int32(rng.IntN(102)))
		k.MqttProgress.Version = pick()
	case *messages.DeviceInput_VersionReported:
		k.VersionReported.FwVersion = strp(pick())
	case *messages.DeviceInput_PcpVersion:
		k.PcpVersion.Version = pick()
	case *messages.DeviceInput_PcpUpgradeResult:
		k.PcpUpgradeResult.Version = pick()
		k.PcpUpgradeResult.Result = uint32(rng.IntN(3))
	case *messages.DeviceInput_PcpNotifyResponse:
		k.PcpNotifyResponse.Result = uint32(rng.IntN(4))
	case *messages.DeviceInput_PcpSegmentRequest:
		k.PcpSegmentRequest.SegmentNo = uint32(rng.IntN(4))
	case *messages.DeviceInput_Lwm2MResponse:
		paths := []string{messages.PathConnMon, messages.PathCellID, messages.PathFirmwareVersion, messages.PathPackageURI, messages.PathUpdate, messages.PathPCPDownlink}
		k.Lwm2MResponse.Path = paths[rng.IntN(len(paths))]
		if k.Lwm2MResponse.Path == messages.PathPCPDownlink {
			k.Lwm2MResponse.PcpCode = uint32([]messages.PcpCode{messages.PcpCodeNotifyNewVersion, messages.PcpCodeReportDownloadResult}[rng.IntN(2)])
		}
		k.Lwm2MResponse.Op = messages.Lwm2MOp(rng.IntN(5))
		k.Lwm2MResponse.Success = rng.IntN(2) == 0
	case *messages.DeviceInput_Connected:
		k.Connected.QueueMode = rng.IntN(3) == 0
	case *messages.DeviceInput_RadioReported:
		if rng.IntN(3) == 0 {
			k.RadioReported.Sinr = nil
		}
		if rng.IntN(3) == 0 {
			k.RadioReported.CellId = ""
		}
	case *messages.DeviceInput_SetAbnormal:
		k.SetAbnormal.Abnormal = rng.IntN(4) == 0
	}
	return in
}
