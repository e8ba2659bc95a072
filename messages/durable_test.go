package messages

import "testing"

// TestJobFinishedMustSync (issue 21): a job's outcome is unsynced (its
// task's synced SubtaskFinished makes it durable first), except a stop,
// which may have reset a FOTA device's object 5.
func TestJobFinishedMustSync(t *testing.T) {
	for status, want := range map[SubtaskStatus]bool{
		SubtaskStatus_SUBTASK_STATUS_SUCCESS: false,
		SubtaskStatus_SUBTASK_STATUS_FAIL:    false,
		SubtaskStatus_SUBTASK_STATUS_STOPPED: true,
	} {
		ev := &DeviceEvent{Kind: &DeviceEvent_JobFinished{JobFinished: &JobFinished{Status: status}}}
		if got := ev.MustSync(); got != want {
			t.Errorf("JobFinished %v: MustSync %v, want %v", status, got, want)
		}
	}
}
