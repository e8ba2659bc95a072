package stacks

import "testing"

// deep uses about n × 512 bytes of stack.
//
//go:noinline
func deep(n int) byte {
	var b [480]byte
	b[n%len(b)] = byte(n)
	if n == 0 {
		return b[0]
	}
	return deep(n-1) + b[n%len(b)]
}

var sink byte

// BenchmarkDeepGoroutine: a goroutine whose work needs about 10 KiB of
// stack, started per run, growing its stack step by step under its frames
// or with Grow first.
//
//	go test ./internal/stacks -run '^$' -bench DeepGoroutine -benchmem
func BenchmarkDeepGoroutine(b *testing.B) {
	for _, c := range []struct {
		name string
		grow bool
	}{{"step-by-step", false}, {"grow-first", true}} {
		b.Run(c.name, func(b *testing.B) {
			done := make(chan byte)
			for b.Loop() {
				go func() {
					if c.grow {
						Grow()
					}
					done <- deep(20)
				}()
				sink += <-done
			}
		})
	}
}
