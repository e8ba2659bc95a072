package lwm2m_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport/coapudp"
)

// rawDevice is a device that speaks CoAP over a plain UDP socket, with
// nothing of a CoAP stack but go-coap's codec: its own cost per exchange is
// a send and a receive.
type rawDevice struct {
	conn *net.UDPConn
	mid  uint16
	buf  [1500]byte
}

func dialRaw(tb testing.TB, addr string) *rawDevice {
	tb.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return &rawDevice{conn: c, mid: 1}
}

// post sends a CON POST to path with the queries and returns the
// piggybacked answer.
func (d *rawDevice) post(tb testing.TB, path string, queries ...string) message.Message {
	tb.Helper()
	buf := make([]byte, 256)
	opts, n, err := message.Options{}.SetPath(buf, path)
	if err != nil {
		tb.Fatal(err)
	}
	for _, q := range queries {
		if opts, _, err = opts.AddString(buf[n:], message.URIQuery, q); err != nil {
			tb.Fatal(err)
		}
		n += len(q)
	}
	d.mid++
	m := message.Message{Code: codes.POST, Type: message.Confirmable, MessageID: int32(d.mid), Token: message.Token{byte(d.mid), byte(d.mid >> 8)}, Options: opts}
	out := make([]byte, 512)
	k, err := coder.DefaultCoder.Encode(m, out)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := d.conn.Write(out[:k]); err != nil {
		tb.Fatal(err)
	}
	_ = d.conn.SetReadDeadline(clock.Real().Now().Add(10 * time.Second))
	for {
		k, err := d.conn.Read(d.buf[:])
		if err != nil {
			tb.Fatal(err)
		}
		res := message.Message{Options: make(message.Options, 0, 16)}
		if _, err := coder.DefaultCoder.Decode(d.buf[:k], &res); err != nil {
			tb.Fatal(err)
		}
		if res.MessageID == int32(d.mid) {
			return res
		}
	}
}

// BenchmarkRegistrationUpdate measures the registration update of an idle
// device (no job; its actor passivated), end to end on loopback: the
// device's datagram, the server's answer, the engine (which wakes no
// actor). The figure is the whole process's CPU per update, the raw
// devices' sends and receives included, beside the same exchange against a
// coapudp server that answers 2.04 and does nothing else (bare-cpu-µs).
//
//	go test ./transport/lwm2m -run '^$' -bench RegistrationUpdate -benchtime 20000x
func BenchmarkRegistrationUpdate(b *testing.B) {
	const n = 1000
	s := newStack(b)
	var regs []persistence.Device
	for i := range n {
		regs = append(regs, persistence.Device{ID: fmt.Sprintf("u%d", i), ProductID: "meter"})
	}
	if err := s.store.CreateDevices(context.Background(), regs); err != nil {
		b.Fatal(err)
	}
	devs := make([]*rawDevice, n)
	paths := make([]string, n)
	for i := range devs {
		devs[i] = dialRaw(b, s.srv.Addr())
		res := devs[i].post(b, "/rd", fmt.Sprintf("ep=u%d", i), "lt=86400")
		loc, err := res.Options.LocationPath()
		if err != nil || res.Code != codes.Created {
			b.Fatalf("register u%d: %v %v", i, res.Code, err)
		}
		paths[i] = strings.TrimPrefix(loc, "/")
	}
	s.eng.Settle()
	s.clk.Advance(2 * time.Minute) // past PassivateAfter: the actors go
	s.eng.Settle()
	run := func(addr string, path func(i int) string) float64 {
		ds := make([]*rawDevice, n)
		for i := range ds {
			ds[i] = devs[i]
			if addr != s.srv.Addr() {
				ds[i] = dialRaw(b, addr)
			}
		}
		b.ResetTimer()
		cpu0 := cpuTime()
		for i := range b.N {
			if res := ds[i%n].post(b, path(i%n)); res.Code != codes.Changed {
				b.Fatalf("update: %v", res.Code)
			}
		}
		cpu := cpuTime() - cpu0
		b.StopTimer()
		return float64(cpu.Microseconds()) / float64(b.N)
	}
	otafleet := run(s.srv.Addr(), func(i int) string { return "/" + paths[i] })
	bare, err := coapudp.Listen("127.0.0.1:0", coapudp.Config{Clock: clock.Real(), Handler: func(w *coapudp.ResponseWriter, r *coapudp.Request) {
		w.SetResponse(codes.Changed, message.TextPlain, nil)
	}})
	if err != nil {
		b.Fatal(err)
	}
	bare.Start()
	defer bare.Close()
	bareCPU := run(bare.Addr().String(), func(i int) string { return "/" + paths[i] })
	if live := s.eng.Live()["device"]; live > 0 {
		b.Fatalf("%d device actors woken by updates", live)
	}
	b.ReportMetric(otafleet, "cpu-µs/update")
	b.ReportMetric(bareCPU, "bare-cpu-µs/update")
}
