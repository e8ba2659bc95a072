package mqtt

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// gateUplinks stands for the engine journaling reports: each report's Deliver
// waits for the test to answer it on gate (nil: journaled). Other inputs
// (presence) return nil at once.
type gateUplinks struct {
	entered chan *messages.DeviceInput
	gate    chan error
}

func newGateUplinks() *gateUplinks {
	return &gateUplinks{entered: make(chan *messages.DeviceInput, 16), gate: make(chan error)}
}

func (g *gateUplinks) Deliver(ctx context.Context, _ string, in *messages.DeviceInput) error {
	if !in.IsReport() {
		return nil
	}
	g.entered <- in
	select {
	case err := <-g.gate:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestPubackOnlyOnceJournaled (issue 18 item 10): the embedded broker sends
// the PUBACK of a QoS 1 report only after the engine has journaled it, and
// none when the engine could not (the device publishes it again). Before the
// fix a report the engine refused was acknowledged all the same.
func TestPubackOnlyOnceJournaled(t *testing.T) {
	g := newGateUplinks()
	e := newEnvUplinks(t, g)
	cl, err := e.connect(t, "d1", "secret-1", "", 120*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	report := func(v string) []byte { return iotda.EncodeVersionReport("d1", &v, nil, epoch) }
	wait := func(what string, done <-chan struct{}) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		select {
		case <-done:
		case <-ctx.Done():
			t.Fatalf("no PUBACK for %s", what)
		}
	}

	// A report in the engine's hands has no PUBACK until it is journaled.
	first := cl.Publish(iotda.UpTopic("d1"), 1, false, report("1.0"))
	<-g.entered
	select {
	case <-first.Done():
		t.Fatal("PUBACK before the report was journaled")
	default:
	}
	g.gate <- nil
	wait("a journaled report", first.Done())

	// A report the engine could not journal gets no PUBACK. The broker reads
	// one connection's packets in order, so once the PUBACK of the next report
	// is in, the refused one's would have come first.
	refused := cl.Publish(iotda.UpTopic("d1"), 1, false, report("2.0"))
	<-g.entered
	g.gate <- errors.New("actors: journal write failed")
	next := cl.Publish(iotda.UpTopic("d1"), 1, false, report("3.0"))
	<-g.entered
	g.gate <- nil
	wait("the report after the refused one", next.Done())
	select {
	case <-refused.Done():
		t.Fatal("a report the engine could not journal was acknowledged")
	default:
	}
}
