package clock

import "time"

func Now() time.Time { return time.Now() }

func After(d time.Duration) <-chan time.Time { return time.After(d) }
