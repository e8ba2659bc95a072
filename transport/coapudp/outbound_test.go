package coapudp

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// do runs s.Do in a goroutine; the result arrives on the returned channel.
type result struct {
	res *message.Message
	err error
}

func goDo(ctx context.Context, s *Server, d *device, req *message.Message) <-chan result {
	ch := make(chan result, 1)
	go func() {
		res, err := s.Do(ctx, d.addr(), req)
		ch <- result{res, err}
	}()
	return ch
}

func get(t *testing.T, path string) *message.Message {
	return &message.Message{Code: codes.GET, Options: pathOpts(t, path)}
}

func TestRetransmissionThenTimeout(t *testing.T) {
	s, clk := newServer(t, Config{ACKRandomFactor: 1}) // 2, 4, 8, 16, 32 s exactly
	d := newDevice(t, s.Addr())
	ch := goDo(context.Background(), s, d, get(t, "3/0/3"))
	first := d.recv()
	if first.Type != message.Confirmable || first.Code != codes.GET || len(first.Token) == 0 {
		t.Fatalf("request: %v", first)
	}
	for i, wait := range []time.Duration{2, 4, 8, 16} {
		clk.Advance(wait*time.Second - time.Millisecond)
		d.none()
		clk.Advance(time.Millisecond)
		again := d.recv()
		if again.MessageID != first.MessageID || !bytes.Equal(again.Token, first.Token) {
			t.Fatalf("retransmission %d: %v, first %v", i+1, again, first)
		}
	}
	clk.Advance(32*time.Second - time.Millisecond)
	select {
	case r := <-ch:
		t.Fatalf("ended before MAX_TRANSMIT_WAIT: %v", r.err)
	default:
	}
	clk.Advance(time.Millisecond)
	if r := <-ch; !errors.Is(r.err, ErrTimeout) {
		t.Fatalf("err %v, want ErrTimeout", r.err)
	}
	d.none()
	// The day after, nothing is left: no timer, no entry.
	clk.Advance(24 * time.Hour)
	if clk.Pending() != 0 || s.peerState() != 0 {
		t.Fatalf("after a day: %d timers, %d per-peer records", clk.Pending(), s.peerState())
	}
}

func TestPiggybackedResponseAfterRetransmission(t *testing.T) {
	s, clk := newServer(t, Config{})
	d := newDevice(t, s.Addr())
	ch := goDo(context.Background(), s, d, get(t, "3/0/3"))
	req := d.recv()
	clk.Advance(3 * time.Second)
	d.recv()
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: req.MessageID, Token: req.Token, Payload: []byte("1.0")})
	r := <-ch
	if r.err != nil || r.res.Code != codes.Content || string(r.res.Payload) != "1.0" {
		t.Fatalf("Do: %v %v", r.res, r.err)
	}
	clk.Advance(time.Minute)
	d.none() // no retransmission after the answer
	// The next request takes the next Message ID.
	ch = goDo(context.Background(), s, d, get(t, "3/0/3"))
	next := d.recv()
	if uint16(next.MessageID) != uint16(req.MessageID)+1 || bytes.Equal(next.Token, req.Token) {
		t.Fatalf("next request %v after %v", next, req)
	}
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: next.MessageID, Token: next.Token})
	<-ch
}

func TestEmptyACKThenSeparateResponse(t *testing.T) {
	s, clk := newServer(t, Config{})
	d := newDevice(t, s.Addr())
	ch := goDo(context.Background(), s, d, &message.Message{Code: codes.POST, Options: pathOpts(t, "5/0/2")})
	req := d.recv()
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Empty, MessageID: req.MessageID})
	eventually(t, func() bool { return s.awaitingACK() == 0 })
	clk.Advance(2 * time.Minute)
	d.none() // acknowledged: no retransmission
	sep := message.Message{Type: message.Confirmable, Code: codes.Changed, MessageID: 500, Token: req.Token}
	d.send(sep)
	if m := d.recv(); m.Type != message.Acknowledgement || m.Code != codes.Empty || m.MessageID != 500 {
		t.Fatalf("separate response acknowledged with %v", m)
	}
	if r := <-ch; r.err != nil || r.res.Code != codes.Changed {
		t.Fatalf("Do: %v %v", r.res, r.err)
	}
	// Its retransmission (our ACK lost) gets the same ACK, not an RST.
	d.send(sep)
	if m := d.recv(); m.Type != message.Acknowledgement || m.MessageID != 500 {
		t.Fatalf("retransmitted separate response answered %v", m)
	}
}

func TestSeparateResponseTimesOut(t *testing.T) {
	s, clk := newServer(t, Config{SeparateTimeout: time.Minute})
	d := newDevice(t, s.Addr())
	ch := goDo(context.Background(), s, d, get(t, "x"))
	req := d.recv()
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Empty, MessageID: req.MessageID})
	eventually(t, func() bool { return s.awaitingACK() == 0 })
	clk.Advance(time.Minute - time.Millisecond)
	select {
	case r := <-ch:
		t.Fatalf("ended early: %v", r.err)
	default:
	}
	clk.Advance(time.Millisecond)
	if r := <-ch; !errors.Is(r.err, ErrTimeout) {
		t.Fatalf("err %v, want ErrTimeout", r.err)
	}
}

func TestResetEndsRequest(t *testing.T) {
	s, _ := newServer(t, Config{})
	d := newDevice(t, s.Addr())
	ch := goDo(context.Background(), s, d, get(t, "x"))
	req := d.recv()
	d.send(message.Message{Type: message.Reset, Code: codes.Empty, MessageID: req.MessageID})
	if r := <-ch; !errors.Is(r.err, ErrReset) {
		t.Fatalf("err %v, want ErrReset", r.err)
	}
}

func TestStaleAnswerJumpsMessageIDs(t *testing.T) {
	s, _ := newServer(t, Config{})
	d := newDevice(t, s.Addr())
	ch := goDo(context.Background(), s, d, get(t, "x"))
	req := d.recv()
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Changed, MessageID: req.MessageID, Token: []byte("old")})
	if r := <-ch; !errors.Is(r.err, ErrStaleAnswer) {
		t.Fatalf("err %v, want ErrStaleAnswer", r.err)
	}
	ch = goDo(context.Background(), s, d, get(t, "x"))
	again := d.recv()
	if uint16(again.MessageID) != uint16(req.MessageID)+1+midJump {
		t.Fatalf("Message ID after a stale answer %d, first %d", again.MessageID, req.MessageID)
	}
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: again.MessageID, Token: again.Token})
	if r := <-ch; r.err != nil {
		t.Fatal(r.err)
	}
}

func TestContextEndsRequest(t *testing.T) {
	s, clk := newServer(t, Config{})
	d := newDevice(t, s.Addr())
	ctx, cancel := context.WithCancel(context.Background())
	ch := goDo(ctx, s, d, get(t, "x"))
	req := d.recv()
	cancel()
	if r := <-ch; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("err %v", r.err)
	}
	clk.Advance(time.Minute)
	d.none() // no retransmission of a cancelled request
	// A late answer matches nothing: dropped (an ACK is never answered).
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: req.MessageID, Token: req.Token})
	d.none()
}

func TestCloseEndsRequests(t *testing.T) {
	s, _ := newServer(t, Config{})
	d := newDevice(t, s.Addr())
	ch := goDo(context.Background(), s, d, get(t, "x"))
	d.recv()
	s.Close()
	if r := <-ch; !errors.Is(r.err, ErrClosed) {
		t.Fatalf("err %v, want ErrClosed", r.err)
	}
}
