package lwm2m_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/otafleet/otafleet/bench/sim/lwm2msim"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// The loss tests put a UDP proxy on loopback between a simulated device and
// the server and lose chosen datagrams, each test device its own: a lost
// datagram must cost a retransmission (or, where nothing retransmits, a
// probe of the device's state), never the step's timeout.

// lossyLink is a UDP proxy between one device and the server: the device
// sends to its address, it forwards from a socket of its own, so the server
// sees the proxy's address as the device's. drop decides, datagram by
// datagram, what is lost (up: from the device to the server).
type lossyLink struct {
	front, back *net.UDPConn
	drop        func(up bool, m *message.Message) bool

	mu      sync.Mutex
	device  *net.UDPAddr // the device's address: the last that sent
	dropped []string
}

func newLossyLink(t *testing.T, server string, drop func(up bool, m *message.Message) bool) *lossyLink {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	raddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, raddr)
	if err != nil {
		t.Fatal(err)
	}
	l := &lossyLink{front: front, back: back, drop: drop}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.pump(true) }()
	go func() { defer wg.Done(); l.pump(false) }()
	t.Cleanup(func() {
		front.Close()
		back.Close()
		wg.Wait()
	})
	return l
}

var debugLoss = false

func (l *lossyLink) addr() string { return l.front.LocalAddr().String() }

// pump forwards one direction until its socket closes.
func (l *lossyLink) pump(up bool) {
	buf := make([]byte, 2048)
	for {
		var n int
		var from *net.UDPAddr
		var err error
		if up {
			n, from, err = l.front.ReadFromUDP(buf)
		} else {
			n, err = l.back.Read(buf)
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // an ICMP error of an earlier datagram
		}
		m := message.Message{Options: make(message.Options, 0, 32)}
		_, err = coder.DefaultCoder.Decode(buf[:n], &m)
		if debugLoss {
			fmt.Println(describe(up, &m), err)
		}
		if err == nil && l.drop(up, &m) {
			l.mu.Lock()
			l.dropped = append(l.dropped, describe(up, &m))
			l.mu.Unlock()
			continue
		}
		if up {
			l.mu.Lock()
			l.device = from
			l.mu.Unlock()
			_, _ = l.back.Write(buf[:n])
			continue
		}
		l.mu.Lock()
		to := l.device
		l.mu.Unlock()
		if to != nil {
			_, _ = l.front.WriteToUDP(buf[:n], to)
		}
	}
}

func (l *lossyLink) lost() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.dropped...)
}

func describe(up bool, m *message.Message) string {
	dir := "server→device"
	if up {
		dir = "device→server"
	}
	p, _ := m.Options.Path()
	payload := m.Payload
	if len(payload) > 8 {
		payload = payload[:8]
	}
	return fmt.Sprintf("%s %v %v mid %d %s %q", dir, m.Type, m.Code, m.MessageID, p, payload)
}

// Datagram classes.

func blockNum(m *message.Message) (uint32, bool) {
	v, err := m.Options.GetUint32(message.Block2)
	return v >> 4, err == nil
}

// pathOf is the request's Uri-Path, without the leading '/'.
func pathOf(m *message.Message) string {
	p, _ := m.Options.Path()
	return strings.TrimPrefix(p, "/")
}

func isBlockRequest(m *message.Message, num uint32) bool {
	p := pathOf(m)
	n, ok := blockNum(m)
	return m.Code == codes.GET && len(p) > 3 && p[:3] == "fw/" && ok && n == num
}

func isBlockResponse(m *message.Message, num uint32) bool {
	n, ok := blockNum(m)
	return m.Type == message.Acknowledgement && m.Code == codes.Content && ok && n == num
}

// isStateNotification: a CON notification of /5/0/3 (text/plain) showing
// state.
func isStateNotification(m *message.Message, state int) bool {
	_, err := m.Options.Observe()
	return m.Type == message.Confirmable && m.Code == codes.Content && err == nil && string(m.Payload) == fmt.Sprint(state)
}

func isRequestTo(m *message.Message, code codes.Code, path string) bool {
	return m.Type == message.Confirmable && m.Code == code && pathOf(m) == path
}

// firstOnly loses the first datagram that match accepts, none after it.
func firstOnly(match func(up bool, m *message.Message) bool) func(bool, *message.Message) bool {
	var once sync.Once
	return func(up bool, m *message.Message) bool {
		if !match(up, m) {
			return false
		}
		lost := false
		once.Do(func() { lost = true })
		return lost
	}
}

// everyCopyOfFirst loses the first message that match accepts and every
// copy of it (its retransmissions carry its Message ID), and nothing else.
func everyCopyOfFirst(match func(up bool, m *message.Message) bool) func(bool, *message.Message) bool {
	var mu sync.Mutex
	first, dir := int32(-1), false
	return func(up bool, m *message.Message) bool {
		mu.Lock()
		defer mu.Unlock()
		if first < 0 && match(up, m) {
			first, dir = m.MessageID, up
		}
		return first >= 0 && up == dir && m.MessageID == first && m.Type == message.Confirmable
	}
}

// acksOf loses every ACK the server sends to a CON notification that match
// accepts, its retransmissions' included: as a server whose journal takes
// longer than the device waits.
func acksOf(match func(m *message.Message) bool) func(bool, *message.Message) bool {
	var mu sync.Mutex
	mids := map[int32]bool{}
	return func(up bool, m *message.Message) bool {
		mu.Lock()
		defer mu.Unlock()
		if up {
			if match(m) {
				mids[m.MessageID] = true
			}
			return false
		}
		return m.Type == message.Acknowledgement && m.Code == codes.Empty && mids[m.MessageID]
	}
}

// acksOfFirst loses every copy of the ACK the server sends to the first CON
// notification that match accepts, and no other: the device's copies of it
// with another Message ID are acknowledged.
func acksOfFirst(match func(m *message.Message) bool) func(bool, *message.Message) bool {
	var mu sync.Mutex
	first := int32(-1)
	return func(up bool, m *message.Message) bool {
		mu.Lock()
		defer mu.Unlock()
		if up {
			if first < 0 && match(m) {
				first = m.MessageID
			}
			return false
		}
		return m.Type == message.Acknowledgement && m.Code == codes.Empty && m.MessageID == first
	}
}

// TestLostDatagramsCostNoTimeout loses, on one device each, one datagram of
// each kind a FOTA upgrade exchanges, or every copy of one, and checks that
// every device upgrades without a step timeout: the device or the server
// retransmits, and where nothing can (a notification the device gave up
// on, which ends its observation, RFC 7641 4.5), the server's probe of a
// quiet download reads the state the device is in.
func TestLostDatagramsCostNoTimeout(t *testing.T) {
	s := newStack(t)
	slow := lwm2msim.Behaviour{BytesPerSecond: 600} // 10 s for the 6,000-byte package
	cases := []struct {
		id   string
		drop func(bool, *message.Message) bool
		b    lwm2msim.Behaviour
		// notify is the device's NotifyTimeout (0: the default, 93 s).
		notify time.Duration
		// stalls: nothing retransmits what is lost; the device's state
		// must be asked.
		stalls bool
	}{
		{id: "block-request", drop: firstOnly(func(up bool, m *message.Message) bool { return up && isBlockRequest(m, 2) })},
		{id: "block-response", drop: firstOnly(func(up bool, m *message.Message) bool { return !up && isBlockResponse(m, 2) })},
		{id: "uri-write", drop: firstOnly(func(up bool, m *message.Message) bool {
			return !up && isRequestTo(m, codes.PUT, "5/0/1") && len(m.Payload) > 0
		})},
		// Every copy of the URI write lost: the server's retransmissions
		// cannot help; half way through T5 the probe writes it again.
		{id: "uri-write-every-copy", drop: everyCopyOfFirst(func(up bool, m *message.Message) bool {
			return !up && isRequestTo(m, codes.PUT, "5/0/1") && len(m.Payload) > 0
		})},
		{id: "notification-ack", drop: firstOnly(func(up bool, m *message.Message) bool {
			return !up && m.Type == message.Acknowledgement && m.Code == codes.Empty
		})},
		{id: "downloaded-notification", drop: firstOnly(func(up bool, m *message.Message) bool { return up && isStateNotification(m, 2) })},
		{id: "execute", drop: firstOnly(func(up bool, m *message.Message) bool { return !up && isRequestTo(m, codes.POST, "5/0/2") })},
		// Every copy of State 2 lost: the device gives up, its observation
		// of /5/0/3 ends, and the server hears nothing more.
		{id: "downloaded-every-copy", stalls: true, notify: 5 * time.Second, drop: func(up bool, m *message.Message) bool { return up && isStateNotification(m, 2) }},
		// Every copy of State 1 lost, the download slow: the device ends
		// its observation before State 2.
		{id: "downloading-every-copy", stalls: true, b: slow, notify: 5 * time.Second, drop: func(up bool, m *message.Message) bool { return up && isStateNotification(m, 1) }},
		// The ACK of State 1 never comes in time (a slow journal): the
		// device drops the observation before its download completes.
		{id: "downloading-ack", stalls: true, b: slow, notify: 5 * time.Second, drop: acksOf(func(m *message.Message) bool { return isStateNotification(m, 1) })},
		// Only the ACKs of the first message of State 1 are lost (they
		// come after go-coap stopped waiting): the device sends it again
		// and keeps its observation.
		// A tenth of what the device receives lost at random (sim
		// --drop-rate): each loss costs a retransmission.
		{id: "random-loss", b: lwm2msim.Behaviour{DropRate: 0.1}, drop: func(bool, *message.Message) bool { return false }},
		{id: "downloading-late-ack", b: slow, notify: 40 * time.Second, drop: acksOfFirst(func(m *message.Message) bool { return isStateNotification(m, 1) })},
	}
	links := map[string]*lossyLink{}
	devs := map[string]*lwm2msim.Device{}
	var ids []string
	for i, c := range cases {
		l := newLossyLink(t, s.srv.Addr(), c.drop)
		links[c.id] = l
		devs[c.id] = s.startVia(l.addr(), c.id, int64(5000+i), lwm2msim.Config{Lifetime: longLifetime, Behaviour: c.b, RequestTimeout: 3 * time.Second, NotifyTimeout: c.notify})
		ids = append(ids, c.id)
	}
	s.createTask("fota", s.fw, ids)
	ctx := context.Background()
	running := func() map[string]bool {
		v, err := s.eng.TaskDevices(ctx, "fota", 0, 1000, messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, st := range v.Subtasks {
			out[st.DeviceID] = true
		}
		return out
	}
	// The network's time: the engine's and the server's clock moves a
	// second every 100 ms, so that the server retransmits, until every
	// device is done or stalled: downloaded, with a notification that was
	// never acknowledged.
	limit := clock.Real().Now().Add(90 * time.Second)
	for {
		run := running()
		waiting := 0
		for _, c := range cases {
			st, _ := devs[c.id].FirmwareState()
			stalled := c.stalls && st == messages.FotaStateDownloaded && devs[c.id].Stats().Unacknowledged > 0
			if run[c.id] && !stalled {
				waiting++
			}
		}
		if waiting == 0 {
			break
		}
		if clock.Real().Now().After(limit) {
			s.dumpStuck("fota")
			t.Fatalf("the devices neither finished nor stalled; lost: %v", lostAll(links))
		}
		s.eng.Settle()
		s.clk.Advance(time.Second)
		tm := clock.Real().NewTimer(100 * time.Millisecond)
		<-tm.C()
	}
	// The stalled devices: minutes pass, up to T6 and beyond.
	for range 70 {
		if len(running()) == 0 {
			break
		}
		s.eng.Settle()
		s.clk.Advance(time.Minute)
		tm := clock.Real().NewTimer(250 * time.Millisecond)
		<-tm.C()
	}
	got := outcomes(s.waitTask("fota"))
	for _, c := range cases {
		if want := messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS.String(); got[c.id] != want {
			t.Errorf("%s: %q, want %q; lost: %q", c.id, got[c.id], want, links[c.id].lost())
		}
		if len(links[c.id].lost()) == 0 && c.b.DropRate == 0 {
			t.Errorf("%s: nothing was lost", c.id)
		}
		if fw, _ := devs[c.id].Versions(); fw != "2.0" {
			t.Errorf("%s: firmware %s, want 2.0", c.id, fw)
		}
		// Only the stalls end an observation: elsewhere a retransmission
		// made up for the loss.
		if n := devs[c.id].Stats().Unacknowledged; (n > 0) != c.stalls {
			t.Errorf("%s: %d notifications unacknowledged", c.id, n)
		}
	}
	t.Logf("lost: %v; lost at random: %d", lostAll(links), devs["random-loss"].Stats().Lost)
}

// startVia is start with the device talking to the server through addr
// (a lossyLink).
func (s *stack) startVia(addr, id string, cell int64, cfg lwm2msim.Config) *lwm2msim.Device {
	s.t.Helper()
	ctx := context.Background()
	if err := s.store.CreateDevices(ctx, []persistence.Device{{ID: id, ProductID: "meter"}}); err != nil {
		s.t.Fatal(err)
	}
	cfg.Server, cfg.Endpoint, cfg.FwVersion, cfg.CellID = addr, id, "1.0", cell
	cfg.RSRP, cfg.SINR = coverage(0)
	cfg.NewVersion = func(string) string { return "2.0" }
	d, err := lwm2msim.Start(ctx, cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(d.Stop)
	return d
}

func lostAll(links map[string]*lossyLink) map[string][]string {
	out := map[string][]string{}
	for id, l := range links {
		out[id] = l.lost()
	}
	return out
}
