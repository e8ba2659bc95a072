package other

import _ "time"

type clock struct{}

func (clock) Now() int { return 0 }

// time is not package time in this file: it does not import it by name.
var time clock

var n = time.Now()
