package lwm2m_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

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
