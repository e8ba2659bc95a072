package coapudp

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// newServer starts a server on loopback with a fake clock; h may be nil
// (every request gets 4.04).
func newServer(t *testing.T, cfg Config) (*Server, *clocktest.Clock) {
	t.Helper()
	clk := clocktest.New(epoch)
	if cfg.Clock == nil {
		cfg.Clock = clk
	}
	if cfg.Handler == nil {
		cfg.Handler = func(w *ResponseWriter, r *Request) { w.SetResponse(0x84, 0, nil) }
	}
	s, err := Listen("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Close() })
	return s, clk
}

// device is a peer on a raw UDP socket that speaks through go-coap's codec.
type device struct {
	t    *testing.T
	conn *net.UDPConn
	srv  netip.AddrPort
}

func newDevice(t *testing.T, srv netip.AddrPort) *device {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &device{t: t, conn: c, srv: srv}
}

func (d *device) addr() netip.AddrPort { return d.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (d *device) send(m message.Message) {
	d.t.Helper()
	b, err := encode(nil, m)
	if err != nil {
		d.t.Fatal(err)
	}
	d.sendRaw(b)
}

func (d *device) sendRaw(b []byte) {
	d.t.Helper()
	if _, err := d.conn.WriteToUDPAddrPort(b, d.srv); err != nil {
		d.t.Fatal(err)
	}
}

// recv waits for the next datagram (the test's -timeout catches a hang).
func (d *device) recv() *message.Message {
	d.t.Helper()
	if err := d.conn.SetReadDeadline(time.Time{}); err != nil {
		d.t.Fatal(err)
	}
	return d.read()
}

func (d *device) read() *message.Message {
	d.t.Helper()
	buf := make([]byte, 2048)
	n, _, err := d.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		d.t.Fatal(err)
	}
	m := &message.Message{Options: make(message.Options, 0, 16)}
	if _, err := coder.DefaultCoder.Decode(buf[:n], m); err != nil {
		d.t.Fatalf("undecodable datagram % x: %v", buf[:n], err)
	}
	return m
}

// none asserts that no datagram is queued for the device. A datagram sent
// on loopback is queued on the receiving socket by the time the send
// returns, and the server's sends that the test waits for happen before
// the call that triggered them returns (Advance, a handler the test
// observed returning).
func (d *device) none() {
	d.t.Helper()
	if err := d.conn.SetReadDeadline(time.Unix(1, 0)); err != nil {
		d.t.Fatal(err)
	}
	if m := d.read(); m != nil {
		d.t.Fatalf("unexpected datagram: %v", m)
	}
}

// eventually waits until cond holds: for a datagram sent to the server to
// have been handled by a reader (the test's -timeout catches a hang).
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		runtime.Gosched()
	}
}

// awaitingACK is the number of outgoing requests awaiting their ACK.
func (s *Server) awaitingACK() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.acks)
		sh.mu.Unlock()
	}
	return n
}
