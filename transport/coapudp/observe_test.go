package coapudp

import (
	"bytes"
	"context"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

func TestObserveNotificationsAckedAfterCallback(t *testing.T) {
	s, _ := newServer(t, Config{})
	d := newDevice(t, s.Addr())
	entered, release := make(chan string, 4), make(chan struct{})
	type obsResult struct {
		o   *Observation
		res *message.Message
		err error
	}
	ch := make(chan obsResult, 1)
	go func() {
		o, res, err := s.Observe(context.Background(), d.addr(), get(t, "5/0/3"), func(n *message.Message, ack func(bool)) {
			entered <- string(n.Payload)
			<-release
			ack(true)
		})
		ch <- obsResult{o, res, err}
	}()
	req := d.recv()
	if v, err := req.Options.Observe(); err != nil || v != 0 {
		t.Fatalf("observe request %v", req)
	}
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: req.MessageID, Token: req.Token, Options: message.Options{}.Add(UintOption(message.Observe, 1)), Payload: []byte("0")})
	r := <-ch
	if r.err != nil || r.o == nil || string(r.res.Payload) != "0" {
		t.Fatalf("Observe: %v %v %v", r.o, r.res, r.err)
	}
	note := message.Message{Type: message.Confirmable, Code: codes.Content, MessageID: 900, Token: req.Token, Options: message.Options{}.Add(UintOption(message.Observe, 2)), Payload: []byte("1")}
	d.send(note)
	if p := <-entered; p != "1" {
		t.Fatalf("callback got %q", p)
	}
	d.none() // not acknowledged while the callback runs
	release <- struct{}{}
	if m := d.recv(); m.Type != message.Acknowledgement || m.MessageID != 900 {
		t.Fatalf("notification answered %v", m)
	}
	// Again: the same ACK, no second call.
	d.send(note)
	if m := d.recv(); m.Type != message.Acknowledgement || m.MessageID != 900 {
		t.Fatalf("duplicate notification answered %v", m)
	}
	select {
	case p := <-entered:
		t.Fatalf("callback called again for a duplicate (%q)", p)
	default:
	}
	// A NON notification: a call, no answer.
	d.send(message.Message{Type: message.NonConfirmable, Code: codes.Content, MessageID: 901, Token: req.Token, Payload: []byte("2")})
	if p := <-entered; p != "2" {
		t.Fatalf("callback got %q", p)
	}
	release <- struct{}{}
	// Cancel: a GET with Observe=1 under the same token.
	cch := make(chan error, 1)
	go func() { _, err := r.o.Cancel(context.Background()); cch <- err }()
	cancel := d.recv()
	if v, err := cancel.Options.Observe(); err != nil || v != 1 || !bytes.Equal(cancel.Token, req.Token) || cancel.Code != codes.GET {
		t.Fatalf("cancel request %v", cancel)
	}
	if p, _ := cancel.Options.Path(); p != "/5/0/3" {
		t.Fatalf("cancel path %q", p)
	}
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: cancel.MessageID, Token: cancel.Token})
	if err := <-cch; err != nil {
		t.Fatal(err)
	}
	// After it, a notification under the token gets an RST.
	d.send(message.Message{Type: message.Confirmable, Code: codes.Content, MessageID: 902, Token: req.Token})
	if m := d.recv(); m.Type != message.Reset || m.MessageID != 902 {
		t.Fatalf("notification after cancel answered %v", m)
	}
}

func TestObserveRefused(t *testing.T) {
	s, _ := newServer(t, Config{})
	d := newDevice(t, s.Addr())
	type obsResult struct {
		o   *Observation
		err error
	}
	ch := make(chan obsResult, 1)
	go func() {
		o, _, err := s.Observe(context.Background(), d.addr(), get(t, "5/0/3"), func(*message.Message, func(bool)) { t.Error("callback of a refused observation") })
		ch <- obsResult{o, err}
	}()
	req := d.recv()
	d.send(message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: req.MessageID, Token: req.Token}) // no Observe option
	if r := <-ch; r.err != nil || r.o != nil {
		t.Fatalf("Observe without an Observe option in the answer: %v %v", r.o, r.err)
	}
	d.send(message.Message{Type: message.NonConfirmable, Code: codes.Content, MessageID: 3, Token: req.Token})
	if m := d.recv(); m.Type != message.Reset {
		t.Fatalf("notification of a refused observation answered %v", m)
	}
}
