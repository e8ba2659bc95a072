package taskfsm

import (
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// TestResultCodeRecorded: the device's own code travels from the outcome to
// the sub-task, and survives replay.
func TestResultCodeRecorded(t *testing.T) {
	at := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	cfg := DefaultConfig()
	var s State
	var journal []*messages.TaskEvent
	step := func(in *messages.TaskInput) {
		t.Helper()
		in.AtUnixNano = messages.UnixNano(at)
		next, res, err := Step(cfg, s, in)
		if err != nil {
			t.Fatal(err)
		}
		s = next
		journal = append(journal, res.Events...)
	}
	step(&messages.TaskInput{Kind: &messages.TaskInput_Create{Create: &messages.CreateTask{
		TaskId: "t", TaskType: messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, Protocol: messages.Protocol_PROTOCOL_MQTT,
		Package: &messages.Package{PackageId: "p", Version: "2"}, DeviceIds: []string{"a"},
	}}})
	step(&messages.TaskInput{Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
		TaskId: "t", DeviceId: "a", Attempt: 1, Status: messages.SubtaskStatus_SUBTASK_STATUS_FAIL,
		Reason: messages.Reason_REASON_PACKAGE_VERIFICATION_FAILED, Detail: "sha mismatch", ResultCode: 7,
	}}})
	var replayed State
	for _, e := range journal {
		replayed = Evolve(replayed, e)
	}
	for name, st := range map[string]State{"live": s, "replayed": replayed} {
		sub, ok := st.Subtask("a")
		if !ok || sub.ResultCode != 7 || sub.Detail != "sha mismatch" || sub.Status != messages.SubtaskStatus_SUBTASK_STATUS_FAIL {
			t.Errorf("%s: %+v", name, sub)
		}
	}
}
