package messages

import "time"

// UnixNano converts t to the int64 nanoseconds carried in messages; the zero
// time.Time becomes 0.
func UnixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Time converts nanoseconds carried in messages back to a UTC time.Time; 0
// becomes the zero time.Time.
func Time(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}
