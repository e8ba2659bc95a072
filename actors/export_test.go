package actors

import (
	"context"

	"github.com/otafleet/otafleet/messages"
)

// AskTask asks a task's actor for its view, as a query of a task that is
// not live does: tests compare it with the read model's answer.
func (e *Engine) AskTask(ctx context.Context, taskID string, offset, limit int, status messages.SubtaskStatus) (TaskView, error) {
	return e.askTask(ctx, taskID, offset, limit, status)
}
