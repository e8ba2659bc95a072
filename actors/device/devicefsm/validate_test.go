package devicefsm

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	c := DefaultConfig()
	c.Download = 0
	err := c.Validate()
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "Download") {
		t.Fatalf("zero Download: %v", err)
	}
}

func TestStatus(t *testing.T) {
	s := New("d")
	if s.Status() != messages.SubtaskStatus_SUBTASK_STATUS_UNSPECIFIED {
		t.Fatal("idle device has a sub-task status")
	}
	s.Job = testJob(protoMQTT)
	if s.Status() != messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
		t.Fatal("active job is not PROCESSING")
	}
}

// TestInvalidInputs: every malformed input is a clear ErrInvalidInput naming
// the field, and changes nothing.
func TestInvalidInputs(t *testing.T) {
	at := messages.UnixNano(epoch)
	job := func(mut func(j *messages.Job)) *messages.DeviceInput {
		j := proto.Clone(testJob(protoPCP)).(*messages.Job)
		mut(j)
		return &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_StartJob{StartJob: &messages.StartJob{Job: j}}}
	}
	cases := []struct {
		name string
		in   *messages.DeviceInput
		want string
	}{
		{"nil input", nil, "no kind"},
		{"no kind", &messages.DeviceInput{AtUnixNano: at}, "no kind"},
		{"no time", &messages.DeviceInput{Kind: &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{}}}, "at_unix_nano"},
		{"other device", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_StartJob{StartJob: &messages.StartJob{DeviceId: "other", Job: testJob(protoMQTT)}}}, "not this device"},
		{"no job", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_StartJob{StartJob: &messages.StartJob{}}}, "job is missing"},
		{"no task", job(func(j *messages.Job) { j.TaskId = "" }), "task_id"},
		{"attempt 0", job(func(j *messages.Job) { j.Attempt = 0 }), "attempt"},
		{"stop no task", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_StopJob{StopJob: &messages.StopJob{}}}, "task_id"},
		{"grant no cell", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_PermitGranted{PermitGranted: &messages.PermitGranted{}}}, "cell_id"},
		{"deadline no step", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{}}}, "step"},
		{"version none", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{}}}, "neither"},
		{"fota none", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_FotaStatus{FotaStatus: &messages.FotaStatus{}}}, "neither"},
		{"fota state 4", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_FotaStatus{FotaStatus: &messages.FotaStatus{State: i32p(4)}}}, "0..3"},
		{"fota result -1", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_FotaStatus{FotaStatus: &messages.FotaStatus{UpdateResult: i32p(-1)}}}, "negative"},
		{"progress 101", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_MqttProgress{MqttProgress: &messages.MqttProgress{Progress: i32p(101)}}}, "0..100"},
		{"response no path", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{}}}, "path"},
		{"pcp code 256", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_PcpVersion{PcpVersion: &messages.PcpVersion{Result: 256}}}, "BYTE"},
		{"pcp result 300", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_PcpUpgradeResult{PcpUpgradeResult: &messages.PcpUpgradeResult{Result: 300}}}, "BYTE"},
		{"pcp segment 70000", &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_PcpSegmentRequest{PcpSegmentRequest: &messages.PcpSegmentRequest{SegmentNo: 70000}}}, "WORD"},
	}
	for _, c := range cases {
		s := New("dev-1")
		next, res, err := Step(DefaultConfig(), s, c.in)
		if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrInvalidInput mentioning %q", c.name, err, c.want)
		}
		if len(res.Events)+len(res.Effects) != 0 || dumpState(next) != dumpState(s) {
			t.Errorf("%s: an invalid input changed something", c.name)
		}
	}
}

// TestUnrunnableJobsEnd: a StartJob whose job the machine cannot run (issue
// 20 item 8: a PCP package over 65,535 segments) is no invalid input that
// only the log sees: the job is rejected with REASON_INVALID_JOB and its
// outcome goes to the task, so the sub-task ends instead of staying
// PROCESSING. The device stays idle.
func TestUnrunnableJobsEnd(t *testing.T) {
	at := messages.UnixNano(epoch)
	job := func(mut func(j *messages.Job)) *messages.Job {
		j := proto.Clone(testJob(protoPCP)).(*messages.Job)
		mut(j)
		return j
	}
	for _, c := range []struct {
		name string
		job  *messages.Job
		want string
	}{
		{"no package", job(func(j *messages.Job) { j.Package = nil }), "no package"},
		{"no version", job(func(j *messages.Job) { j.Package = &messages.Package{} }), "no version"},
		{"bad task type", job(func(j *messages.Job) { j.TaskType = 9 }), "task type"},
		{"bad protocol", job(func(j *messages.Job) { j.Protocol = 0 }), "protocol"},
		{"fota software", job(func(j *messages.Job) { j.Protocol = protoFOTA }), "firmware only"},
		{"pcp firmware", job(func(j *messages.Job) { j.TaskType = messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE }), "software only"},
		{"pcp segment 31", job(func(j *messages.Job) { j.Package = &messages.Package{Version: "v", Size: 10, SegmentSize: 31} }), "segment size"},
		{"pcp segment 501", job(func(j *messages.Job) { j.Package = &messages.Package{Version: "v", Size: 10, SegmentSize: 501} }), "segment size"},
		{"pcp empty", job(func(j *messages.Job) { j.Package = &messages.Package{Version: "v", SegmentSize: 100} }), "empty"},
		{"pcp too many segments", job(func(j *messages.Job) {
			j.Package = &messages.Package{Version: "v", Size: 500*messages.PcpMaxSegments + 1, SegmentSize: 500}
		}), "65536 PCP segments"},
		{"pcp long version", job(func(j *messages.Job) {
			j.Package = &messages.Package{Version: strings.Repeat("v", 17), Size: 10, SegmentSize: 32}
		}), "16 bytes"},
		{"pcp check code", job(func(j *messages.Job) {
			j.Package = &messages.Package{Version: "v", Size: 10, SegmentSize: 32, CheckCode: 1 << 16}
		}), "check code"},
	} {
		for _, online := range []bool{false, true} {
			s := New("dev-1")
			s.Online, s.Awake = online, online
			in := &messages.DeviceInput{AtUnixNano: at, Kind: &messages.DeviceInput_StartJob{StartJob: &messages.StartJob{Job: c.job}}}
			next, res, err := Step(DefaultConfig(), s, in)
			if err != nil {
				t.Errorf("%s: refused as invalid input (%v): the task would never hear of it", c.name, err)
				continue
			}
			if next.Job != nil || len(res.Events) != 1 || res.Events[0].GetJobRejected() == nil {
				t.Errorf("%s: events %v, job %v; want one JobRejected and no job", c.name, res.Events, next.Job)
			}
			var out *messages.ReportOutcome
			for _, e := range res.Effects {
				if o := e.GetReportOutcome(); o != nil {
					out = o
				}
			}
			if out == nil || out.GetStatus() != statusFail || out.GetReason() != messages.Reason_REASON_INVALID_JOB ||
				out.GetTaskId() != c.job.GetTaskId() || out.GetAttempt() != c.job.GetAttempt() || !strings.Contains(out.GetDetail(), c.want) {
				t.Errorf("%s: outcome %v, want FAIL %v mentioning %q", c.name, out, messages.Reason_REASON_INVALID_JOB, c.want)
			}
		}
	}
	if err := ValidatePackage(messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, protoPCP,
		&messages.Package{Version: "v", Size: 500 * messages.PcpMaxSegments, SegmentSize: 500}); err != nil {
		t.Errorf("a package of exactly %d segments: %v", messages.PcpMaxSegments, err)
	}
}

// TestDayOfProtocolTime runs a device through a 24-hour online wait and a full
// MQTT upgrade at protocol speed: time exists only in the inputs.
func TestDayOfProtocolTime(t *testing.T) {
	h := newHarness(t)
	h.job = testJob(protoMQTT)
	h.job.Package = &messages.Package{Version: "2.0"}
	h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_StartJob{StartJob: &messages.StartJob{Job: h.job}}})
	h.advance(24*time.Hour + 59*time.Minute)
	if h.s.Job == nil {
		t.Fatal("the 25 h MQTT online wait ended early")
	}
	h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}})
	h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: strp("1.0")}}})
	h.advance(23 * time.Hour)
	h.step(&messages.DeviceInput{Kind: &messages.DeviceInput_MqttProgress{MqttProgress: &messages.MqttProgress{Progress: i32p(100), Version: "2.0"}}})
	if h.s.Last == nil || h.s.Last.Outcome.GetStatus() != statusSuccess {
		t.Fatalf("not a success after 48 h of protocol time: %s", dumpState(h.s))
	}
}
