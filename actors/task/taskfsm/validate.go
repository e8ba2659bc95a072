package taskfsm

import (
	"fmt"
	"strings"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// FieldError is an ErrInvalidInput that names the offending field of an
// input by its proto path (e.g. "policy.retry_count") and says what is wrong
// with it (e.g. "6, at most 5"). errors.Is(err, ErrInvalidInput) holds for
// it; an API shows Field and Problem to its user as they are.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string {
	return ErrInvalidInput.Error() + ": " + e.Field + ": " + e.Problem
}

// Unwrap makes a FieldError match ErrInvalidInput.
func (e *FieldError) Unwrap() error { return ErrInvalidInput }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// DefaultRetryIntervalMinutes is the retry interval of a request that sets
// policy.retry_count and leaves policy.retry_interval_minutes unset (the
// otafleet.v1 API's default; the spec's console recommends it). An API with
// optional fields fills it in before it validates; Step, whose Policy has no
// unset fields, requires an interval with a retry count.
const DefaultRetryIntervalMinutes = 5

// ValidateDeviceCount checks the number of a task's explicit device_ids
// against MaxTargets, as Step does for CreateTask.
func (c Config) ValidateDeviceCount(n int) error {
	if n > c.MaxTargets {
		return fieldErr("device_ids", "%d devices, at most %d", n, c.MaxTargets)
	}
	return nil
}

// ValidatePolicy checks policy p of a task created at at (Unix nanoseconds),
// as Step does for CreateTask: the retry count and interval (both or
// neither), a schedule_time at most ScheduleHorizon ahead of at (0 or a past
// time means "start now") and the window (minutes of a day, start different
// from end, an IANA time zone; "" is UTC). A nil policy is valid. An API calls
// it to answer at once; the error is a *FieldError.
func (c Config) ValidatePolicy(p *messages.Policy, at int64) error {
	_, err := c.validatePolicy(p, at)
	return err
}

// validatePolicy is ValidatePolicy that also returns the window's time zone
// (nil without a window), so that Step loads it once.
func (c Config) validatePolicy(p *messages.Policy, at int64) (*time.Location, error) {
	rc, ri := p.GetRetryCount(), p.GetRetryIntervalMinutes()
	switch {
	case int64(rc) > int64(c.MaxRetryCount):
		return nil, fieldErr("policy.retry_count", "%d, at most %d", rc, c.MaxRetryCount)
	case int64(ri) > int64(c.MaxRetryIntervalMinutes):
		return nil, fieldErr("policy.retry_interval_minutes", "%d, at most %d", ri, c.MaxRetryIntervalMinutes)
	case ri > 0 && rc == 0:
		return nil, fieldErr("policy.retry_interval_minutes", "set without a retry_count")
	case ri == 0 && rc > 0:
		return nil, fieldErr("policy.retry_interval_minutes", "0 with a retry_count; leave it unset for %d minutes", DefaultRetryIntervalMinutes)
	}
	if sched := p.GetScheduleTimeUnixNano(); sched != 0 && sched > at+int64(c.ScheduleHorizon) {
		return nil, fieldErr("policy.schedule_time", "%s is more than %s ahead",
			messages.Time(sched).UTC().Format(time.RFC3339), horizonText(c.ScheduleHorizon))
	}
	w := p.GetWindow()
	if w == nil {
		return nil, nil
	}
	switch {
	case w.GetStartMinute() >= minutesPerDay:
		return nil, fieldErr("policy.window.start_minute", "%d, at most %d", w.GetStartMinute(), minutesPerDay-1)
	case w.GetEndMinute() >= minutesPerDay:
		return nil, fieldErr("policy.window.end_minute", "%d, at most %d", w.GetEndMinute(), minutesPerDay-1)
	case w.GetStartMinute() == w.GetEndMinute():
		return nil, fieldErr("policy.window.end_minute", "equals start_minute; leave the window unset for any time of day")
	}
	loc, err := loadZone(w.GetTimeZone())
	if err != nil {
		return nil, fieldErr("policy.window.time_zone", "%q is not an IANA time zone", w.GetTimeZone())
	}
	return loc, nil
}

// horizonText says d in whole days when it is whole days ("7 days").
func horizonText(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d == day:
		return "1 day"
	case d > 0 && d%day == 0:
		return fmt.Sprintf("%d days", d/day)
	}
	return d.String()
}

// loadZone loads a window's time zone: "" is UTC; "Local" (in any case) is
// refused because it differs between machines.
func loadZone(name string) (*time.Location, error) {
	if strings.EqualFold(name, "local") {
		return nil, fmt.Errorf("the machine's local zone is not allowed; name an IANA zone")
	}
	return time.LoadLocation(name)
}
