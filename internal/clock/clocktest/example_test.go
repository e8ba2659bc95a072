package clocktest_test

import (
	"fmt"
	"time"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
)

func Example() {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := clocktest.New(start)
	c.AfterFunc(3*time.Minute, func() { fmt.Println("version report timeout at", c.Since(start)) })
	c.AfterFunc(24*time.Hour, func() { fmt.Println("online timeout at", c.Since(start)) })

	c.Advance(24 * time.Hour) // returns at once, after both callbacks ran
	fmt.Println("pending:", c.Pending())
	// Output:
	// version report timeout at 3m0s
	// online timeout at 24h0m0s
	// pending: 0
}
