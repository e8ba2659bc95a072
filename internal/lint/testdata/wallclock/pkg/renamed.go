package pkg

import (
	stdtime "time"
)

func h(f func()) {
	var time stdtime.Duration
	stdtime.AfterFunc(time, f)
	_ = stdtime.Since(stdtime.Unix(0, 0))
}
