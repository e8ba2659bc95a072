package lwm2m_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/lwm2m"
)

// gatedJournal holds each append to a device stream until the test answers
// it on gate.
type gatedJournal struct {
	persistence.EventStore
	entered chan persistence.Append
	gate    chan struct{}
}

func (g *gatedJournal) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if a.Stream.Kind == persistence.KindDevice {
		g.entered <- a
		<-g.gate
	}
	return g.EventStore.Append(ctx, a)
}

// TestConfirmableNotificationAckedWhenJournaled (issue 18 item 10): the
// server acknowledges a CON notification (go-coap sends the ACK when the
// observation callback returns) only once the engine has journaled the
// report it carries. Before the fix the engine took the report into the
// actor's mailbox and the ACK left while the journal write was still to come.
func TestConfirmableNotificationAckedWhenJournaled(t *testing.T) {
	ctx := context.Background()
	journal := &gatedJournal{EventStore: memstore.New(), entered: make(chan persistence.Append, 16), gate: make(chan struct{})}
	eng, err := actors.New(actors.Config{}, actors.Deps{Store: journal, Clock: clocktest.New(epoch), Transport: &transport.LateDownlinks{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Stop)
	e := newEnv(t, func(c *lwm2m.Config) { c.Uplinks = eng })
	d := dial(t, e)
	d.set("/3/0/3", resource{message.TextPlain, []byte("1.0")})
	if _, err := d.register(t, "ep=d1&lt=600", links); err != nil {
		t.Fatal(err)
	}
	<-journal.entered // Connected
	journal.gate <- struct{}{}
	if err := e.srv.Send(ctx, &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: "/3/0/3"}}}); err != nil {
		t.Fatal(err)
	}
	<-journal.entered // the observation's first answer: version 1.0
	journal.gate <- struct{}{}

	d.mu.Lock()
	tok := d.obsToken["/3/0/3"]
	d.mu.Unlock()
	acked := make(chan error, 1)
	go func() {
		m := d.conn.AcquireMessage(ctx)
		defer d.conn.ReleaseMessage(m)
		m.SetCode(codes.Content)
		m.SetToken(tok)
		m.SetObserve(2)
		m.SetContentFormat(message.TextPlain)
		m.SetBody(strings.NewReader("1.1"))
		m.SetType(message.Confirmable)
		acked <- d.conn.WriteMessage(m) // a CON message: returns when its ACK arrives
	}()
	<-journal.entered // the notification's report is being journaled
	window, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	select {
	case <-acked:
		t.Fatal("the CON notification was acknowledged before its report was journaled")
	case <-window.Done():
	}
	journal.gate <- struct{}{}
	if err := <-acked; err != nil {
		t.Fatalf("notification: %v", err)
	}
	v, err := eng.Device(ctx, "d1")
	if err != nil || v.State.FwVersion != "1.1" {
		t.Fatalf("device after the notification: fw %q, %v", v.State.FwVersion, err)
	}
}

// TestAnswersDeliveredNoAck (issue 21): the transport marks a report no_ack
// when nothing is acknowledged to the device on it (an observation's first
// answer, a read's answer, a non-confirmable notification), and the engine
// journals those unsynced; a confirmable notification, which the device
// expects acknowledged, is journaled synced.
func TestAnswersDeliveredNoAck(t *testing.T) {
	ctx := context.Background()
	journal := &gatedJournal{EventStore: memstore.New(), entered: make(chan persistence.Append, 16), gate: make(chan struct{})}
	eng, err := actors.New(actors.Config{}, actors.Deps{Store: journal, Clock: clocktest.New(epoch), Transport: &transport.LateDownlinks{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Stop)
	e := newEnv(t, func(c *lwm2m.Config) { c.Uplinks = eng })
	d := dial(t, e)
	d.set("/3/0/3", resource{message.TextPlain, []byte("1.0")})
	if _, err := d.register(t, "ep=d1&lt=600", links); err != nil {
		t.Fatal(err)
	}
	<-journal.entered // Connected
	journal.gate <- struct{}{}
	// expect takes the next device append, checks how it is synced, and lets it through.
	expect := func(what string, wantSync bool) {
		t.Helper()
		a := <-journal.entered
		if a.NoSync == wantSync {
			t.Errorf("%s: appended with NoSync=%v, want %v", what, a.NoSync, !wantSync)
		}
		journal.gate <- struct{}{}
	}
	if err := e.srv.Send(ctx, &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: "/3/0/3"}}}); err != nil {
		t.Fatal(err)
	}
	expect("the observation's first answer", false)

	d.mu.Lock()
	tok := d.obsToken["/3/0/3"]
	d.mu.Unlock()
	// notify sends a notification; a CON one returns when its ACK arrives,
	// that is after its append went through the gate.
	notify := func(seq uint32, v string, typ message.Type) <-chan error {
		sent := make(chan error, 1)
		go func() {
			m := d.conn.AcquireMessage(ctx)
			defer d.conn.ReleaseMessage(m)
			m.SetCode(codes.Content)
			m.SetToken(tok)
			m.SetObserve(seq)
			m.SetContentFormat(message.TextPlain)
			m.SetBody(strings.NewReader(v))
			m.SetType(typ)
			sent <- d.conn.WriteMessage(m)
		}()
		return sent
	}
	sent := notify(2, "1.1", message.Confirmable)
	expect("a confirmable notification", true)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	sent = notify(3, "1.2", message.NonConfirmable)
	expect("a non-confirmable notification", false)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}

	d.set("/3/0/3", resource{message.TextPlain, []byte("1.3")})
	if err := e.srv.Send(ctx, &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/3/0/3"}}}); err != nil {
		t.Fatal(err)
	}
	expect("a read's answer", false)

	v, err := eng.Device(ctx, "d1")
	if err != nil || v.State.FwVersion != "1.3" {
		t.Fatalf("device after the read: fw %q, %v", v.State.FwVersion, err)
	}
}

// refuseOnce fails the first delivery of a report whose text contains
// match, as the engine does while its journal is down; it delivers the rest.
type refuseOnce struct {
	transport.Uplinks
	match   string
	refused atomic.Int32
	text    func(id string, in *messages.DeviceInput) string
}

func (r *refuseOnce) Deliver(ctx context.Context, id string, in *messages.DeviceInput) error {
	if strings.Contains(r.text(id, in), r.match) && r.refused.Add(1) == 1 {
		return persistence.ErrUnavailable
	}
	return r.Uplinks.Deliver(ctx, id, in)
}

// TestConfirmableNotificationRefusedNotAcked (issue 22): a CON notification
// whose report the engine refuses (its journal is unavailable) is not
// acknowledged, and the copy the device retransmits is delivered again
// rather than swallowed as a duplicate or dropped as stale: the report the
// device sent is not lost.
func TestConfirmableNotificationRefusedNotAcked(t *testing.T) {
	ctx := context.Background()
	refuse := &refuseOnce{match: `fw_version:"1.1"`, text: func(id string, in *messages.DeviceInput) string {
		return id + " " + strings.NewReplacer(": ", ":").Replace(strings.Join(strings.Fields(prototext.Format(in)), " "))
	}}
	e := newEnv(t, func(c *lwm2m.Config) { refuse.Uplinks = c.Uplinks; c.Uplinks = refuse })
	d := dial(t, e)
	d.set("/3/0/3", resource{message.TextPlain, []byte("1.0")})
	if _, err := d.register(t, "ep=d1&lt=600", links); err != nil {
		t.Fatal(err)
	}
	e.rec.next(t) // connected
	if err := e.srv.Send(ctx, &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: "/3/0/3"}}}); err != nil {
		t.Fatal(err)
	}
	if got := e.rec.next(t); !strings.Contains(got, `"1.0"`) {
		t.Fatalf("first answer delivered as %q", got)
	}
	d.mu.Lock()
	tok := d.obsToken["/3/0/3"]
	d.mu.Unlock()
	m := d.conn.AcquireMessage(ctx)
	defer d.conn.ReleaseMessage(m)
	m.SetCode(codes.Content)
	m.SetToken(tok)
	m.SetObserve(2)
	m.SetContentFormat(message.TextPlain)
	m.SetBody(strings.NewReader("1.1"))
	m.SetType(message.Confirmable)
	// A CON message: WriteMessage retransmits it until its ACK arrives.
	if err := d.conn.WriteMessage(m); err != nil {
		t.Fatalf("notification: %v", err)
	}
	if got := e.rec.next(t); !strings.Contains(got, `fw_version:"1.1"`) {
		t.Fatalf("delivered %q, want the notification's version", got)
	}
	if n := refuse.refused.Load(); n != 2 {
		t.Fatalf("the notification reached the engine %d times, want 2 (refused, then its retransmission)", n)
	}
}
