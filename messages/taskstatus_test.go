package messages

import "testing"

// TestTaskStatusFinal lists every TaskStatus value with its finality, so a
// value added to the enum fails here until it is placed on one side.
func TestTaskStatusFinal(t *testing.T) {
	want := map[TaskStatus]bool{
		TaskStatus_TASK_STATUS_UNSPECIFIED:     false,
		TaskStatus_TASK_STATUS_WAITING:         false,
		TaskStatus_TASK_STATUS_PROCESSING:      false,
		TaskStatus_TASK_STATUS_SUCCESS:         true,
		TaskStatus_TASK_STATUS_FAIL:            true,
		TaskStatus_TASK_STATUS_PARTIAL_SUCCESS: true,
		TaskStatus_TASK_STATUS_STOPPING:        false,
		TaskStatus_TASK_STATUS_STOPPED:         true,
	}
	for n, name := range TaskStatus_name {
		s := TaskStatus(n)
		final, ok := want[s]
		if !ok {
			t.Errorf("%s (%d) is not in this test: say whether it is final", name, n)
			continue
		}
		if got := s.Final(); got != final {
			t.Errorf("%s.Final() = %v, want %v", name, got, final)
		}
	}
	if len(want) != len(TaskStatus_name) {
		t.Errorf("the test lists %d statuses, the enum has %d", len(want), len(TaskStatus_name))
	}
	if TaskStatus(len(TaskStatus_name) + 10).Final() {
		t.Error("an unknown status is final")
	}
}
