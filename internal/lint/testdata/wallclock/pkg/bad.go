package pkg

import "time"

// now is a function value: referring to time.Now counts as using it.
var now = time.Now

func f() {
	time.Sleep(time.Second)
	_ = time.NewTicker(time.Second)
	_ = time.Until(time.Unix(0, 0))
	_ = time.Duration(3) * time.Minute
}

// g's parameter shadows the import: time.After here is a method of time.Time.
func g(time time.Time) bool {
	return time.After(time)
}
