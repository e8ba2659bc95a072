package actors

import "github.com/otafleet/otafleet/actors/task/taskfsm"

// TaskConfig returns the task machine's configuration the engine runs with
// (its limits), so that an API checks a request against the same limits
// with taskfsm's own validation before it creates the task.
func (e *Engine) TaskConfig() taskfsm.Config { return e.cfg.Task }
