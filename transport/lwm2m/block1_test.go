package lwm2m

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func blockOpt(num uint32, more bool, szx uint32) uint32 {
	v := num<<4 | szx
	if more {
		v |= 8
	}
	return v
}

// TestBodies: blocks in order make the body; a retransmitted block is
// taken again; the bounds answer 4.08, 4.13 and 5.03.
func TestBodies(t *testing.T) {
	body := bytes.Repeat([]byte("</3/0>,"), 30) // 210 bytes: 3 blocks of 64 and 18
	b := newBodies()
	var got []byte
	for num, done := uint32(0), false; !done; num++ {
		end := min(int(num+1)*64, len(body))
		more := end < len(body)
		var err error
		got, done, err = b.add("udp a", "rd?ep=d1", blockOpt(num, more, 2), -1, body[num*64:end], t0)
		if err != nil || done == more {
			t.Fatalf("block %d: done %v, %v", num, done, err)
		}
		if num == 1 { // the same block again (a retransmission)
			if _, done, err := b.add("udp a", "rd?ep=d1", blockOpt(num, more, 2), -1, body[num*64:end], t0); err != nil || done {
				t.Fatalf("block 1 again: %v %v", done, err)
			}
		}
	}
	if !bytes.Equal(got, body) || b.inFlight() != 0 {
		t.Fatalf("body %q, %d in flight", got, b.inFlight())
	}
	code := func(err error) codes.Code {
		var be *block1Error
		if !errors.As(err, &be) {
			t.Fatalf("error %v is no *block1Error", err)
		}
		return be.code
	}
	full := bytes.Repeat([]byte("x"), 64)
	// A block whose predecessors never came; one past the bytes received.
	if _, _, err := b.add("udp a", "rd?ep=d1", blockOpt(3, true, 2), -1, full, t0); code(err) != codes.RequestEntityIncomplete {
		t.Errorf("block 3 first: %v", err)
	}
	_, _, _ = b.add("udp a", "rd?ep=d1", blockOpt(0, true, 2), -1, full, t0)
	if _, _, err := b.add("udp a", "rd?ep=d1", blockOpt(2, true, 2), -1, full, t0); code(err) != codes.RequestEntityIncomplete || b.inFlight() != 0 {
		t.Errorf("a gap: %v, %d in flight", err, b.inFlight())
	}
	// Another request's block does not continue this one.
	_, _, _ = b.add("udp a", "rd?ep=d1", blockOpt(0, true, 2), -1, full, t0)
	if _, _, err := b.add("udp a", "rd/1", blockOpt(1, true, 2), -1, full, t0); code(err) != codes.RequestEntityIncomplete {
		t.Errorf("another request's block 1: %v", err)
	}
	// A short block that says more follow.
	if _, _, err := b.add("udp a", "rd?ep=d1", blockOpt(0, true, 2), -1, full[:10], t0); code(err) != codes.BadRequest {
		t.Errorf("a short block: %v", err)
	}
	// Too large: announced, or reached.
	if _, _, err := b.add("udp a", "rd?ep=d1", blockOpt(0, true, 6), maxRegistrationBody+1, make([]byte, 1024), t0); code(err) != codes.RequestEntityTooLarge {
		t.Errorf("Size1 beyond the bound: %v", err)
	}
	var err error
	for num := uint32(0); err == nil; num++ {
		if num > maxRegistrationBody/1024 {
			t.Fatalf("%d blocks of 1 KiB taken", num)
		}
		_, _, err = b.add("udp a", "rd?ep=d1", blockOpt(num, true, 6), -1, make([]byte, 1024), t0)
	}
	if code(err) != codes.RequestEntityTooLarge || b.inFlight() != 0 {
		t.Errorf("a body beyond the bound: %v, %d in flight", err, b.inFlight())
	}
	if _, _, err := b.add("udp a", "rd?ep=d1", blockOpt(0, true, 7), -1, full, t0); code(err) != codes.BadOption {
		t.Errorf("BERT: %v", err)
	}
	// Room: maxPartialBodies peers in flight, then 5.03 until one is stale.
	for i := range maxPartialBodies {
		if _, _, err := b.add(string(rune(i)), "rd?ep=d1", blockOpt(0, true, 2), -1, full, t0); err != nil {
			t.Fatalf("peer %d: %v", i, err)
		}
	}
	if _, _, err := b.add("udp late", "rd?ep=d1", blockOpt(0, true, 2), -1, full, t0.Add(partialBodyTTL)); code(err) != codes.ServiceUnavailable {
		t.Errorf("one body too many: %v", err)
	}
	if _, _, err := b.add("udp late", "rd?ep=d1", blockOpt(0, true, 2), -1, full, t0.Add(partialBodyTTL+time.Second)); err != nil || b.inFlight() != 1 {
		t.Errorf("after the others went stale: %v, %d in flight", err, b.inFlight())
	}
}
