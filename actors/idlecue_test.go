package actors_test

import (
	"context"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRegistrationUpdateWakesNoIdleDevice (issue 21, idle CPU): a
// registration update of a device whose actor passivated (it has no job)
// wakes no actor and journals nothing, and is counted; the device stays
// online. A live device's actor still gets its updates.
func TestRegistrationUpdateWakesNoIdleDevice(t *testing.T) {
	ctx := context.Background()
	store := memstore.New()
	reg := prometheus.NewRegistry()
	stopped := make(chan actors.Address, 16)
	e, clk := newDeliverEngine(t, store, reg, stopped)
	skipped := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "otafleet_registration_updates_skipped_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		t.Fatal("otafleet_registration_updates_skipped_total is not registered")
		return 0
	}
	update := &messages.DeviceInput{Kind: &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{RegistrationUpdate: true}}}
	connected := &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}}

	if err := e.Deliver(ctx, "meter-1", connected); err != nil {
		t.Fatal(err)
	}
	e.Settle()
	// While the actor is live, updates reach it.
	if err := e.Deliver(ctx, "meter-1", update); err != nil {
		t.Fatal(err)
	}
	e.Settle()
	if n := skipped(); n != 0 {
		t.Fatalf("%v updates of a live device skipped", n)
	}
	clk.Advance(2 * time.Minute)
	<-stopped
	if got := e.Live()["device"]; got != 0 {
		t.Fatalf("%d device actors live after passivation", got)
	}
	appends := func() uint64 { s, u := store.Appends(); return s + u }
	n0 := appends()
	for range 100 {
		if err := e.Deliver(ctx, "meter-1", update); err != nil {
			t.Fatal(err)
		}
	}
	e.Settle()
	if got := e.Live()["device"]; got != 0 {
		t.Fatalf("registration updates woke %d device actors", got)
	}
	if n := skipped(); n != 100 {
		t.Fatalf("%v updates counted as skipped, want 100", n)
	}
	if n := appends(); n != n0 {
		t.Fatalf("registration updates of an idle device appended %d times", n-n0)
	}
	v, err := e.Device(ctx, "meter-1")
	if err != nil {
		t.Fatal(err)
	}
	if !v.State.Online {
		t.Fatal("the device is not online after its updates")
	}
}

// BenchmarkIdleRegistrationUpdate: the engine's cost of a registration update
// of a device without a job whose actor passivated (the idle fleet's steady
// state): no actor wakes.
//
//	go test ./actors -run '^$' -bench IdleRegistrationUpdate
func BenchmarkIdleRegistrationUpdate(b *testing.B) {
	ctx := context.Background()
	stopped := make(chan actors.Address, 1)
	clk := clocktest.New(epoch)
	e, err := actors.New(actors.Config{PassivateAfter: time.Minute}, actors.Deps{
		Store: memstore.New(), Clock: clk, Transport: nullTransport{},
		Deactivated: func(a actors.Address) { stopped <- a },
	})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Stop()
	if err := e.Start(ctx); err != nil {
		b.Fatal(err)
	}
	if err := e.Deliver(ctx, "meter-1", &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}}); err != nil {
		b.Fatal(err)
	}
	e.Settle()
	clk.Advance(2 * time.Minute)
	<-stopped
	update := &messages.DeviceInput{Kind: &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{RegistrationUpdate: true}}}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := e.Deliver(ctx, "meter-1", update); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if got := e.Live()["device"]; got != 0 {
		b.Fatalf("%d device actors woke", got)
	}
}
