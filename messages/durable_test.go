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

// TestFoundAgainOnResume (issue 21): only a FOTA Update Result 1, with
// State 0 or none, is a report the device machine finds again after a
// crash took its step.
func TestFoundAgainOnResume(t *testing.T) {
	i32 := func(v int32) *int32 { return &v }
	fota := func(state, result *int32) *DeviceInput {
		return &DeviceInput{Kind: &DeviceInput_FotaStatus{FotaStatus: &FotaStatus{State: state, UpdateResult: result}}}
	}
	for _, tc := range []struct {
		name string
		in   *DeviceInput
		want bool
	}{
		{"result 1", fota(nil, i32(UpdateResultSuccess)), true},
		{"state 0, result 1", fota(i32(FotaStateIdle), i32(UpdateResultSuccess)), true},
		{"state 3, result 1", fota(i32(FotaStateUpdating), i32(UpdateResultSuccess)), false},
		{"state 1", fota(i32(FotaStateDownloading), nil), false},
		{"state 2", fota(i32(FotaStateDownloaded), nil), false},
		{"state 3", fota(i32(FotaStateUpdating), nil), false},
		{"state 0", fota(i32(FotaStateIdle), nil), false},
		{"result 0", fota(nil, i32(UpdateResultInitial)), false},
		{"result 8", fota(nil, i32(UpdateResultUpdateFailed)), false},
		{"version", &DeviceInput{Kind: &DeviceInput_VersionReported{VersionReported: &VersionReported{}}}, false},
		{"nil", nil, false},
	} {
		if got := tc.in.FoundAgainOnResume(); got != tc.want {
			t.Errorf("%s: FoundAgainOnResume %v, want %v", tc.name, got, tc.want)
		}
	}
}
