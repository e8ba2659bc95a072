package main

import (
	"testing"
	"time"
)

func TestMain(t *testing.T) {
	_ = time.Now()
	time.Sleep(time.Millisecond)
	_ = time.NewTimer(time.Second)
}
