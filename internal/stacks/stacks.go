// Package stacks grows a goroutine's stack at once, for goroutines that
// are started for a burst of deep work (an actor's mailbox run, a device's
// queued deliveries) and would otherwise grow their stack step by step
// under deep frames, copying them each time.
package stacks

// Size is the stack Grow leaves: the largest size the Go runtime keeps in
// its per-P stack caches (larger stacks come from the heap, under its lock,
// which cost more than the copies they save).
const Size = 16 << 10

// frame is Grow's frame: with the goroutine's entry frames it needs a stack
// of Size.
const frame = 12 << 10

// Grow grows the calling goroutine's stack to Size at once, while it holds
// one frame (a copy of almost nothing). Call it first thing in the
// goroutine.
//
//go:noinline
func Grow() {
	var b [frame]byte
	keep(&b)
}

//go:noinline
func keep(b *[frame]byte) { b[0] = 0 }
