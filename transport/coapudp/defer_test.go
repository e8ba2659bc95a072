package coapudp

import (
	"bytes"
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// barrier makes sure the server's one reader has handled everything d sent
// before: a CON ping from d gets its RST only after them.
func barrier(t *testing.T, d *device, mid int32) {
	t.Helper()
	d.send(message.Message{Type: message.Confirmable, Code: codes.Empty, MessageID: mid})
	if m := d.recv(); m.Type != message.Reset || m.MessageID != mid {
		t.Fatalf("ping answered %v", m)
	}
}

// observed sets up an observation of d's /5/0/3 on s whose notifications
// go to fn.
func observed(t *testing.T, s *Server, d *device, fn NotifyFunc) message.Token {
	t.Helper()
	ch := make(chan error, 1)
	go func() {
		_, _, err := s.Observe(context.Background(), d.addr(), get(t, "5/0/3"), fn)
		ch <- err
	}()
	req := d.recv()
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: req.MessageID, Token: req.Token, Options: message.Options{}.Add(UintOption(message.Observe, 1))})
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	return req.Token
}

func TestDeferredNotificationAck(t *testing.T) {
	s, _ := newServer(t, Config{Readers: 1})
	d, other := newDevice(t, s.Addr()), newDevice(t, s.Addr())
	acks := make(chan func(bool), 4)
	token := observed(t, s, d, func(n *message.Message, ack func(bool)) { acks <- ack })
	note := message.Message{Type: message.Confirmable, Code: codes.Content, MessageID: 900, Token: token, Options: message.Options{}.Add(UintOption(message.Observe, 2)), Payload: []byte("1")}
	d.send(note)
	ack := <-acks
	// The callback returned without acknowledging: the one reader serves
	// other peers meanwhile, and a copy of the notification is dropped.
	barrier(t, other, 1)
	d.send(note)
	barrier(t, d, 2)
	d.none()
	if len(acks) != 0 {
		t.Fatal("callback called for a copy of a notification whose ACK is pending")
	}
	ack(true)
	if m := d.recv(); m.Type != message.Acknowledgement || m.Code != codes.Empty || m.MessageID != 900 {
		t.Fatalf("deferred ack sent %v", m)
	}
	ack(true) // a second call sends nothing
	d.none()
	d.send(note)
	if m := d.recv(); m.Type != message.Acknowledgement || m.MessageID != 900 {
		t.Fatalf("copy after the ACK answered %v", m)
	}
	barrier(t, d, 3)
	if len(acks) != 0 {
		t.Fatal("callback called for a copy of an acknowledged notification")
	}
}

// TestRefusedNotification: a notification the callback refuses (ack(false),
// say its journal failed) gets no ACK, and the copy the peer retransmits is
// handled again, as new.
func TestRefusedNotification(t *testing.T) {
	s, _ := newServer(t, Config{Readers: 1})
	d := newDevice(t, s.Addr())
	acks := make(chan func(bool), 4)
	token := observed(t, s, d, func(n *message.Message, ack func(bool)) { acks <- ack })
	note := message.Message{Type: message.Confirmable, Code: codes.Content, MessageID: 901, Token: token, Options: message.Options{}.Add(UintOption(message.Observe, 2)), Payload: []byte("1")}
	d.send(note)
	ack := <-acks
	ack(false)
	ack(true) // a later call does nothing
	barrier(t, d, 4)
	d.none()
	d.send(note) // the peer's retransmission
	again := <-acks
	again(true)
	if m := d.recv(); m.Type != message.Acknowledgement || m.Code != codes.Empty || m.MessageID != 901 {
		t.Fatalf("the copy's ack sent %v", m)
	}
	d.send(note)
	if m := d.recv(); m.Type != message.Acknowledgement || m.MessageID != 901 {
		t.Fatalf("copy after the ACK answered %v", m)
	}
	barrier(t, d, 5)
	if len(acks) != 0 {
		t.Fatal("callback called for a copy of an acknowledged notification")
	}
}

func TestDeferredReply(t *testing.T) {
	var calls atomic.Int32
	replies := make(chan *Reply, 4)
	s, _ := newServer(t, Config{Readers: 1, Handler: func(w *ResponseWriter, r *Request) {
		if p, _ := r.Msg.Options.Path(); p == "/slow" {
			calls.Add(1)
			replies <- w.Defer()
			w.SetResponse(codes.BadRequest, 0, nil) // ignored once deferred
			return
		}
		w.SetResponse(codes.Changed, 0, nil)
	}})
	d, other := newDevice(t, s.Addr()), newDevice(t, s.Addr())
	req := message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 20, Token: []byte{7, 7}, Options: pathOpts(t, "slow")}
	d.send(req)
	rep := <-replies
	other.send(message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 1, Token: []byte{1}, Options: pathOpts(t, "fast")})
	if m := other.recv(); m.Code != codes.Changed {
		t.Fatalf("another peer's request answered %v while a reply is deferred", m)
	}
	d.send(req) // a retransmission while the answer is pending: swallowed
	barrier(t, d, 2)
	d.none()
	rep.Send(codes.Created, message.TextPlain, []byte("late"))
	check := func(m *message.Message) {
		t.Helper()
		if m.Type != message.Acknowledgement || m.MessageID != 20 || m.Code != codes.Created || !bytes.Equal(m.Token, req.Token) || string(m.Payload) != "late" {
			t.Fatalf("deferred answer %v", m)
		}
	}
	check(d.recv())
	rep.Send(codes.Created, message.TextPlain, []byte("again"))
	d.none()
	d.send(req)
	check(d.recv())
	if calls.Load() != 1 {
		t.Fatalf("handler called %d times for a request and its copies, want 1", calls.Load())
	}
	// A NON request: a NON answer under its token.
	d.send(message.Message{Type: message.NonConfirmable, Code: codes.POST, MessageID: 21, Token: []byte{8}, Options: pathOpts(t, "slow")})
	(<-replies).Send(codes.Changed, 0, nil)
	if m := d.recv(); m.Type != message.NonConfirmable || m.Code != codes.Changed || !bytes.Equal(m.Token, []byte{8}) {
		t.Fatalf("deferred answer to a NON %v", m)
	}
	// An empty deferred answer to a CON request: an empty ACK.
	d.send(message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 22, Token: []byte{9}, Options: pathOpts(t, "slow")})
	(<-replies).Send(codes.Empty, 0, nil)
	if m := d.recv(); m.Type != message.Acknowledgement || m.Code != codes.Empty || m.MessageID != 22 {
		t.Fatalf("empty deferred answer %v", m)
	}
}

func TestPeerHandledOneDatagramAtATime(t *testing.T) {
	var inflight, most atomic.Int32
	entered, release, stop := make(chan uint16, 4), make(chan struct{}), make(chan struct{})
	s, _ := newServer(t, Config{Readers: 4, Handler: func(w *ResponseWriter, r *Request) {
		n := inflight.Add(1)
		if n > most.Load() {
			most.Store(n)
		}
		entered <- uint16(r.Msg.MessageID)
		select {
		case <-release:
		case <-stop:
		}
		inflight.Add(-1)
		w.SetResponse(codes.Changed, 0, nil)
	}})
	t.Cleanup(func() { close(stop) }) // before Close, which waits for the readers
	d := newDevice(t, s.Addr())
	d.send(message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 1, Token: []byte{1}, Options: pathOpts(t, "a")})
	<-entered
	d.send(message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 2, Token: []byte{2}, Options: pathOpts(t, "a")})
	// Wait until another reader holds the second datagram and waits for
	// the first one's handler; meanwhile the handler must not run again.
	for s.orderWaits.Load() == 0 {
		select {
		case mid := <-entered:
			t.Fatalf("datagram %d handled while the peer's datagram 1 is", mid)
		default:
		}
		runtime.Gosched()
	}
	release <- struct{}{}
	d.recv()
	<-entered
	release <- struct{}{}
	d.recv()
	if most.Load() != 1 {
		t.Fatalf("%d handlers of one peer at once", most.Load())
	}
}

func TestDuplicateNONDropped(t *testing.T) {
	var calls atomic.Int32
	s, clk := newServer(t, Config{Readers: 1, Handler: counting(&calls)})
	d := newDevice(t, s.Addr())
	req := message.Message{Type: message.NonConfirmable, Code: codes.POST, MessageID: 30, Token: []byte{1}, Options: pathOpts(t, "rd")}
	d.send(req)
	if m := d.recv(); m.Type != message.NonConfirmable {
		t.Fatalf("NON answered %v", m)
	}
	d.send(req)
	barrier(t, d, 31) // the copy is handled before the ping: dropped, unanswered
	if calls.Load() != 1 {
		t.Fatalf("handler called %d times for a NON and its copy, want 1", calls.Load())
	}
	// A copy of a NON notification is dropped too.
	notes := make(chan string, 4)
	token := observed(t, s, d, func(n *message.Message, ack func(bool)) { notes <- string(n.Payload); ack(true) })
	note := message.Message{Type: message.NonConfirmable, Code: codes.Content, MessageID: 32, Token: token, Payload: []byte("n")}
	d.send(note)
	d.send(note)
	barrier(t, d, 33)
	if len(notes) != 1 {
		t.Fatalf("%d calls for a NON notification and its copy, want 1", len(notes))
	}
	// After NON_LIFETIME the Message ID is new again.
	clk.Advance(DefaultNonLifetime + 2*time.Second)
	d.send(req)
	d.recv()
	if calls.Load() != 2 {
		t.Fatalf("handler called %d times after NON_LIFETIME, want 2", calls.Load())
	}
}

func TestNONDedupOff(t *testing.T) {
	var calls atomic.Int32
	s, _ := newServer(t, Config{Handler: counting(&calls), NonLifetime: -1})
	d := newDevice(t, s.Addr())
	req := message.Message{Type: message.NonConfirmable, Code: codes.POST, MessageID: 30, Token: []byte{1}, Options: pathOpts(t, "rd")}
	for range 2 {
		d.send(req)
		d.recv()
	}
	if calls.Load() != 2 || s.dedupEntries() != 0 {
		t.Fatalf("NON dedup off: %d calls, %d entries; want 2 and 0", calls.Load(), s.dedupEntries())
	}
}
