package pkg

import (
	"testing"
	"time"
)

func TestF(t *testing.T) {
	_ = time.Now()
	_ = time.Tick(time.Second)
	_ = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
}
