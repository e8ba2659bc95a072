package taskfsm

import (
	"time"

	"github.com/otafleet/otafleet/messages"
)

// minutesPerDay bounds a window's start_minute and end_minute (0..1439).
const minutesPerDay = 24 * 60

// timeOfDay is the local wall-clock reading of t since local midnight.
func timeOfDay(t time.Time) time.Duration {
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute +
		time.Duration(t.Second())*time.Second + time.Duration(t.Nanosecond())
}

func windowBounds(w *messages.Window) (start, end time.Duration) {
	return time.Duration(w.GetStartMinute()) * time.Minute, time.Duration(w.GetEndMinute()) * time.Minute
}

// isOpen reports whether the daily window w is open at t, read in loc (nil:
// UTC). A nil window, or one whose start equals its end, is always open.
func isOpen(w *messages.Window, loc *time.Location, t time.Time) bool {
	if w == nil {
		return true
	}
	if loc == nil {
		loc = time.UTC
	}
	start, end := windowBounds(w)
	tod := timeOfDay(t.In(loc))
	switch {
	case start < end:
		return tod >= start && tod < end
	case start > end: // spans midnight
		return tod >= start || tod < end
	default:
		return true
	}
}

// NextOpen returns the first instant at or after t at which the daily window
// w is open in loc (nil: UTC); t itself if the window is open at t. A nil
// window is always open.
//
// Daylight-saving changes are handled exactly: within one zone period the
// local clock runs linearly, and at a zone transition it jumps. A window that
// opens inside a skipped hour (spring forward) opens at the transition
// instant if the new local time is inside the window; a window that opens
// inside a repeated hour (fall back) opens at the first occurrence.
func NextOpen(w *messages.Window, loc *time.Location, t time.Time) time.Time {
	if w == nil {
		return t
	}
	if loc == nil {
		loc = time.UTC
	}
	start, _ := windowBounds(w)
	u := t
	// Each iteration either returns or moves to the next zone transition;
	// real zones have at most a few transitions in any 48 hours.
	for range 64 {
		lt := u.In(loc)
		if isOpen(w, loc, u) {
			return u
		}
		d := start - timeOfDay(lt)
		if d <= 0 {
			d += 24 * time.Hour
		}
		cand := u.Add(d)
		_, zoneEnd := lt.ZoneBounds()
		if zoneEnd.IsZero() || cand.Before(zoneEnd) {
			return cand
		}
		u = zoneEnd
	}
	return u
}
