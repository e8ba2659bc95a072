package pkg

import . "time"

var epoch = Unix(0, 0)
