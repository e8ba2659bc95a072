package actors_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// nullTransport drops downlinks.
type nullTransport struct{}

func (nullTransport) Send(context.Context, *messages.Downlink) error           { return nil }
func (nullTransport) RevokeToken(context.Context, *messages.RevokeToken) error { return nil }

// TestPassivationLosesNothing: idle device actors leave memory after
// PassivateAfter and come back on demand; inputs sent while actors passivate
// are all journaled exactly once, in order, and no two actors ever run for one
// device (that would surface as a journal conflict and a refused input).
func TestPassivationLosesNothing(t *testing.T) {
	ctx := context.Background()
	store := memstore.New()
	clk := clocktest.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var activations atomic.Int64
	stopped := make(chan actors.Address, 1024)
	e, err := actors.New(actors.Config{PassivateAfter: time.Minute}, actors.Deps{
		Store: store, Clock: clk, Transport: nullTransport{},
		Activated:   func(actors.Address) { activations.Add(1) },
		Deactivated: func(a actors.Address) { stopped <- a },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	const devices, rounds = 50, 20
	toggle := func(r int) *messages.DeviceInput {
		return &messages.DeviceInput{Kind: &messages.DeviceInput_SetAbnormal{SetAbnormal: &messages.SetAbnormal{Abnormal: r%2 == 0}}}
	}
	send := func(from, to int, chaos bool) {
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for r := from; r < to; r++ {
					for d := g; d < devices; d += 4 {
						if err := e.Deliver(ctx, fmt.Sprintf("dev-%d", d), toggle(r)); err != nil {
							t.Error(err)
						}
					}
				}
			}(g)
		}
		if chaos {
			for i := 0; i < 50; i++ {
				clk.Advance(time.Minute)
			}
		}
		wg.Wait()
		for d := 0; d < devices; d++ { // a query waits behind everything sent before it
			if _, err := e.Device(ctx, fmt.Sprintf("dev-%d", d)); err != nil {
				t.Fatal(err)
			}
		}
	}

	send(0, rounds, false)
	clk.Advance(2 * time.Minute)
	for i := 0; i < devices; i++ {
		<-stopped
	}
	if got := e.Live()["device"]; got != 0 {
		t.Fatalf("%d device actors alive after passivation", got)
	}
	send(rounds, 2*rounds, true) // re-activation, with passivation racing the inputs
	if n := activations.Load(); n < 2*devices {
		t.Errorf("%d activations for %d devices: they did not come back on demand", n, devices)
	}
	for d := 0; d < devices; d++ {
		id := fmt.Sprintf("dev-%d", d)
		seq, err := store.LastSeq(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: id})
		if err != nil {
			t.Fatal(err)
		}
		if seq != 2*rounds {
			t.Errorf("%s: %d events journaled, want %d", id, seq, 2*rounds)
		}
		v, err := e.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if v.State.Abnormal {
			t.Errorf("%s: the last input (abnormal off) was not applied", id)
		}
	}
}
