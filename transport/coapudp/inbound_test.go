package coapudp

import (
	"bytes"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

func pathOpts(t *testing.T, path string) message.Options {
	t.Helper()
	opts, _, err := message.Options{}.SetPath(make([]byte, 64), path)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

// counting returns a handler that answers 2.04 with the request's path as
// payload and counts its calls.
func counting(calls *atomic.Int32) Handler {
	return func(w *ResponseWriter, r *Request) {
		calls.Add(1)
		p, _ := r.Msg.Options.Path()
		w.SetResponse(codes.Changed, message.TextPlain, []byte(p))
	}
}

func TestPiggybackedAnswerAndNonAnswer(t *testing.T) {
	var calls atomic.Int32
	s, _ := newServer(t, Config{Handler: counting(&calls)})
	d := newDevice(t, s.Addr())
	d.send(message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 7, Token: []byte{1, 2}, Options: pathOpts(t, "rd")})
	m := d.recv()
	if m.Type != message.Acknowledgement || m.MessageID != 7 || !bytes.Equal(m.Token, []byte{1, 2}) || m.Code != codes.Changed || string(m.Payload) != "/rd" {
		t.Fatalf("answer to a CON: %v", m)
	}
	d.send(message.Message{Type: message.NonConfirmable, Code: codes.GET, MessageID: 8, Token: []byte{3}, Options: pathOpts(t, "x")})
	m = d.recv()
	if m.Type != message.NonConfirmable || !bytes.Equal(m.Token, []byte{3}) || m.Code != codes.Changed {
		t.Fatalf("answer to a NON: %v", m)
	}
}

func TestDuplicatePOSTGetsTheSameAnswerUntilItExpires(t *testing.T) {
	var calls atomic.Int32
	s, clk := newServer(t, Config{Handler: counting(&calls)})
	d := newDevice(t, s.Addr())
	req := message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 9, Token: []byte{1}, Options: pathOpts(t, "rd")}
	d.send(req)
	first := d.recv()
	d.send(req)
	again := d.recv()
	if calls.Load() != 1 {
		t.Fatalf("handler called %d times for a POST and its duplicate, want 1", calls.Load())
	}
	if first.MessageID != again.MessageID || first.Code != again.Code || string(again.Payload) != "/rd" {
		t.Fatalf("duplicate answered %v, first %v", again, first)
	}
	clk.Advance(DefaultExchangeLifetime + 2*time.Second)
	if n := s.dedupEntries(); n != 0 {
		t.Fatalf("%d duplicate-detection entries after EXCHANGE_LIFETIME, want 0", n)
	}
	if clk.Pending() != 0 {
		t.Fatalf("%d timers armed with nothing left to expire", clk.Pending())
	}
	d.send(req)
	d.recv()
	if calls.Load() != 2 {
		t.Fatalf("handler called %d times after the entry expired, want 2", calls.Load())
	}
}

func TestDuplicateGETIsProcessedAgain(t *testing.T) {
	var calls atomic.Int32
	s, _ := newServer(t, Config{Handler: counting(&calls)})
	d := newDevice(t, s.Addr())
	req := message.Message{Type: message.Confirmable, Code: codes.GET, MessageID: 10, Token: []byte{1}, Options: pathOpts(t, "fw/p")}
	for range 3 {
		d.send(req)
		d.recv()
	}
	if calls.Load() != 3 || s.dedupEntries() != 0 {
		t.Fatalf("3 copies of a GET: %d handler calls, %d entries; want 3 and 0", calls.Load(), s.dedupEntries())
	}
}

func TestDedupIsCapped(t *testing.T) {
	var calls atomic.Int32
	s, _ := newServer(t, Config{Handler: counting(&calls), MaxDedup: shardCount})
	d := newDevice(t, s.Addr())
	for i := range 500 {
		d.send(message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: int32(i), Token: []byte{1}, Options: pathOpts(t, "rd")})
		d.recv()
	}
	// One peer: all its entries in one shard, capped at MaxDedup/shardCount.
	if n := s.dedupEntries(); n != 1 {
		t.Fatalf("%d entries for one peer with a cap of 1 per shard", n)
	}
	// The newest entry is the one kept.
	d.send(message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 499, Token: []byte{1}, Options: pathOpts(t, "rd")})
	d.recv()
	if calls.Load() != 500 {
		t.Fatalf("the newest entry was dropped: %d calls", calls.Load())
	}
}

func TestPingAndStrayMessages(t *testing.T) {
	s, _ := newServer(t, Config{})
	d := newDevice(t, s.Addr())
	d.send(message.Message{Type: message.Confirmable, Code: codes.Empty, MessageID: 11})
	if m := d.recv(); m.Type != message.Reset || m.MessageID != 11 {
		t.Fatalf("ping answered %v, want RST", m)
	}
	// A CON with a bad option layout: RST. Garbage: nothing.
	d.sendRaw([]byte{0x40, 0x01, 0x00, 0x0d, 0xf0})
	if m := d.recv(); m.Type != message.Reset || m.MessageID != 13 {
		t.Fatalf("malformed CON answered %v, want RST", m)
	}
	d.sendRaw([]byte{0x00, 0x01})
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Empty, MessageID: 12})
	d.send(message.Message{Type: message.Confirmable, Code: codes.Content, MessageID: 14, Token: []byte{9}})
	if m := d.recv(); m.Type != message.Reset || m.MessageID != 14 {
		t.Fatalf("a response with an unknown token answered %v, want RST", m)
	}
	d.none()
}

// TestTokenlessResponseIsAcknowledged: a CON response without a token
// (what go-coap's client sends when it takes a Reset for a request: a 4.05
// in a new CON) is acknowledged and dropped, not reset: a Reset would be
// answered by another such 4.05, without end. Unmatched does not see it.
func TestTokenlessResponseIsAcknowledged(t *testing.T) {
	var unmatched atomic.Int32
	s, _ := newServer(t, Config{Unmatched: func(netip.AddrPort, *message.Message) bool { unmatched.Add(1); return false }})
	d := newDevice(t, s.Addr())
	for mid := int32(20); mid < 23; mid++ {
		d.send(message.Message{Type: message.Confirmable, Code: codes.MethodNotAllowed, MessageID: mid})
		if m := d.recv(); m.Type != message.Acknowledgement || m.Code != codes.Empty || m.MessageID != mid {
			t.Fatalf("a tokenless 4.05 (MID %d) answered %v, want an empty ACK", mid, m)
		}
	}
	// A NON one: nothing.
	d.send(message.Message{Type: message.NonConfirmable, Code: codes.MethodNotAllowed, MessageID: 30})
	d.none()
	if n := unmatched.Load(); n != 0 {
		t.Fatalf("Unmatched saw %d tokenless responses", n)
	}
}

func TestHandlerWithoutResponse(t *testing.T) {
	s, _ := newServer(t, Config{Handler: func(*ResponseWriter, *Request) {}})
	d := newDevice(t, s.Addr())
	d.send(message.Message{Type: message.Confirmable, Code: codes.PUT, MessageID: 15, Token: []byte{1}})
	if m := d.recv(); m.Type != message.Acknowledgement || m.Code != codes.Empty || m.MessageID != 15 {
		t.Fatalf("got %v, want an empty ACK", m)
	}
}

func TestServeBlock2(t *testing.T) {
	body := make([]byte, 2500)
	for i := range body {
		body[i] = byte(i * 7)
	}
	s, _ := newServer(t, Config{Handler: func(w *ResponseWriter, r *Request) {
		ServeBlock2(w, r, message.AppOctets, bytes.NewReader(body), int64(len(body)), []byte{0xe7}, 5)
	}})
	d := newDevice(t, s.Addr())
	var got []byte
	for num := uint32(0); ; num++ {
		opts := pathOpts(t, "fw")
		if num > 0 {
			opts = opts.Add(UintOption(message.Block2, num<<4|6))
		}
		d.send(message.Message{Type: message.Confirmable, Code: codes.GET, MessageID: int32(20 + num), Token: []byte{1}, Options: opts})
		m := d.recv()
		v, err := m.Options.GetUint32(message.Block2)
		if err != nil || m.Code != codes.Content {
			t.Fatalf("block %d: %v", num, m)
		}
		if num == 0 {
			if size, err := m.Options.GetUint32(message.Size2); err != nil || size != 2500 || v&7 != 5 || len(m.Payload) != 512 {
				t.Fatalf("block 0 without Block2: %v", m)
			}
			num = 0 // then ask 1024-byte blocks from the start
			got = got[:0]
			d.send(message.Message{Type: message.Confirmable, Code: codes.GET, MessageID: 19, Token: []byte{1}, Options: pathOpts(t, "fw").Add(UintOption(message.Block2, 6))})
			m = d.recv()
			v, _ = m.Options.GetUint32(message.Block2)
		}
		got = append(got, m.Payload...)
		if v&8 == 0 {
			break
		}
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("reassembled %d bytes, not the body", len(got))
	}
	d.send(message.Message{Type: message.Confirmable, Code: codes.GET, MessageID: 40, Token: []byte{1}, Options: pathOpts(t, "fw").Add(UintOption(message.Block2, 3<<4|6))})
	if m := d.recv(); m.Code != codes.BadOption {
		t.Fatalf("block past the end: %v", m)
	}
}
