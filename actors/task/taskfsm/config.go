package taskfsm

import (
	"errors"
	"fmt"
	"time"
)

// Errors returned by Step and Config.Validate. Callers match them with errors.Is;
// the wrapped message names the offending field or state.
var (
	// ErrInvalidInput: the input is malformed (missing IDs, out-of-range values,
	// an unknown device); the rpc layer maps it to invalid_argument.
	ErrInvalidInput = errors.New("taskfsm: invalid input")
	// ErrInvalidTransition: the input is well formed but not allowed in the
	// task's current status; the rpc layer maps it to failed_precondition.
	ErrInvalidTransition = errors.New("taskfsm: invalid transition")
	// ErrInvalidConfig: Config.Validate found an unusable value.
	ErrInvalidConfig = errors.New("taskfsm: invalid config")
)

// WakeStep is the DeadlineFired.step of the task's one timer.
const WakeStep = "wake"

// Config holds the task machine's limits. Fill it with DefaultConfig and
// check it once with Validate at start-up; Step assumes a valid Config.
type Config struct {
	// MaxTargets caps the explicit device_ids of one task (spec 5.1: 30,000).
	// Group members are not counted: group expansion is the caller's job.
	MaxTargets int
	// MaxDeviceIDLen caps the length of one device ID in bytes (spec 5.1: 128).
	MaxDeviceIDLen int
	// MaxRetryCount caps policy.retry_count (spec 5.6: 5).
	MaxRetryCount int
	// MaxRetryIntervalMinutes caps policy.retry_interval_minutes (spec 5.6: 1440).
	MaxRetryIntervalMinutes int
	// ScheduleHorizon is how far ahead of the create request
	// policy.schedule_time may lie (spec 5.6, T12: 7 days).
	ScheduleHorizon time.Duration
	// MaxInFlight caps the sub-tasks PROCESSING at once; the others stay
	// WAITING and start as running ones finish. 0 (the default) means
	// unlimited: a started device may wait up to 24 h for its device to come
	// online, so a per-task cap would stall a campaign behind sleeping
	// devices, and radio pacing is the per-cell budget's job (cellfsm).
	MaxInFlight int
}

// DefaultConfig returns the spec's limits and an unlimited MaxInFlight.
func DefaultConfig() Config {
	return Config{
		MaxTargets:              30000,
		MaxDeviceIDLen:          128,
		MaxRetryCount:           5,
		MaxRetryIntervalMinutes: 1440,
		ScheduleHorizon:         7 * 24 * time.Hour,
		MaxInFlight:             0,
	}
}

// Validate reports the first unusable field, wrapped in ErrInvalidConfig.
func (c Config) Validate() error {
	switch {
	case c.MaxTargets < 1:
		return fmt.Errorf("%w: MaxTargets %d must be at least 1", ErrInvalidConfig, c.MaxTargets)
	case c.MaxDeviceIDLen < 1:
		return fmt.Errorf("%w: MaxDeviceIDLen %d must be at least 1", ErrInvalidConfig, c.MaxDeviceIDLen)
	case c.MaxRetryCount < 0:
		return fmt.Errorf("%w: MaxRetryCount %d must not be negative", ErrInvalidConfig, c.MaxRetryCount)
	case c.MaxRetryIntervalMinutes < 0:
		return fmt.Errorf("%w: MaxRetryIntervalMinutes %d must not be negative", ErrInvalidConfig, c.MaxRetryIntervalMinutes)
	case c.ScheduleHorizon < 0:
		return fmt.Errorf("%w: ScheduleHorizon %v must not be negative", ErrInvalidConfig, c.ScheduleHorizon)
	case c.MaxInFlight < 0:
		return fmt.Errorf("%w: MaxInFlight %d must not be negative (0 = unlimited)", ErrInvalidConfig, c.MaxInFlight)
	}
	return nil
}
