package skipped

import "time"

func f() { time.Sleep(time.Second) }
