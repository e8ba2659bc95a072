package messages

// Final reports whether a task in status s has come to an end: SUCCESS, FAIL,
// PARTIAL_SUCCESS or STOPPED. A final task starts no sub-task by itself (an
// on-demand retry may re-open a FAIL or PARTIAL_SUCCESS one); WAITING,
// PROCESSING and STOPPING are not final, nor is UNSPECIFIED or an unknown
// value. This is the one place that says which statuses are final: the task
// machine, the engine, the API and the command line all ask it (the API's
// TaskStatus has the same numbers and converts to this type).
func (s TaskStatus) Final() bool {
	switch s {
	case TaskStatus_TASK_STATUS_SUCCESS, TaskStatus_TASK_STATUS_FAIL,
		TaskStatus_TASK_STATUS_PARTIAL_SUCCESS, TaskStatus_TASK_STATUS_STOPPED:
		return true
	}
	return false
}
