package lwm2msim

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/otafleet/otafleet/internal/clock"
)

// rawServer is a server socket the test writes CoAP messages to the device
// from, byte by byte, and reads the device's from.
type rawServer struct {
	t    *testing.T
	conn *net.UDPConn
	dev  *net.UDPAddr // the device's address, once it registered
}

func (r *rawServer) send(m message.Message) {
	r.t.Helper()
	b := make([]byte, 1024)
	n, err := coder.DefaultCoder.Encode(m, b)
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.conn.WriteToUDP(b[:n], r.dev); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawServer) recv() message.Message {
	r.t.Helper()
	b := make([]byte, 2048)
	if err := r.conn.SetReadDeadline(clock.Real().Now().Add(waitFor)); err != nil {
		r.t.Fatal(err)
	}
	n, from, err := r.conn.ReadFromUDP(b)
	if err != nil {
		r.t.Fatalf("nothing from the device: %v", err)
	}
	r.dev = from
	m := message.Message{Options: make(message.Options, 0, 32)}
	if _, err := coder.DefaultCoder.Decode(b[:n], &m); err != nil {
		r.t.Fatalf("from the device: %v", err)
	}
	return m
}

// TestResetNotAnswered: a device never answers a Reset (RFC 7252 4.2). It
// answered each with a CON 4.05, which otafleet's server rejects with a
// Reset: one stray Reset started an endless exchange of datagrams.
func TestResetNotAnswered(t *testing.T) {
	l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := &rawServer{t: t, conn: l}
	started := make(chan error, 1)
	var d *Device
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		var err error
		d, err = Start(ctx, Config{Server: l.LocalAddr().String(), Endpoint: "dev-reset", FwVersion: "1.0", Lifetime: time.Hour})
		started <- err
	}()
	reg := r.recv()
	if reg.Code != codes.POST || reg.Type != message.Confirmable {
		t.Fatalf("first message %v %v, want a CON POST /rd", reg.Type, reg.Code)
	}
	r.send(message.Message{Type: message.Acknowledgement, Code: codes.Created, MessageID: reg.MessageID, Token: reg.Token,
		Options: message.Options{{ID: message.LocationPath, Value: []byte("rd")}, {ID: message.LocationPath, Value: []byte("r1")}}})
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			d.Stop()
		}
	}()

	// A Reset that matches nothing, then two reads: each read's answer
	// must come, and nothing else before it.
	r.send(message.Message{Type: message.Reset, Code: codes.Empty, MessageID: 0x1234})
	for i, mid := range []int32{0x2001, 0x2002} {
		tok := []byte{0xab, byte(i)}
		r.send(message.Message{Type: message.Confirmable, Code: codes.GET, MessageID: mid, Token: tok,
			Options: message.Options{{ID: message.URIPath, Value: []byte("3")}, {ID: message.URIPath, Value: []byte("0")}, {ID: message.URIPath, Value: []byte("3")}}})
		m := r.recv()
		if m.Type != message.Acknowledgement || m.MessageID != mid || m.Code != codes.Content || string(m.Payload) != "1.0" {
			t.Fatalf("answer %d: %v %v mid %#x %q; want the ACK 2.05 \"1.0\" of the read %#x (the Reset was answered?)", i, m.Type, m.Code, m.MessageID, m.Payload, mid)
		}
	}
	// Stop de-registers: answer it.
	stopped = true
	done := make(chan struct{})
	go func() { d.Stop(); close(done) }()
	if m := r.recv(); m.Code == codes.DELETE && m.Type == message.Confirmable {
		r.send(message.Message{Type: message.Acknowledgement, Code: codes.Deleted, MessageID: m.MessageID, Token: m.Token})
	}
	<-done
}
