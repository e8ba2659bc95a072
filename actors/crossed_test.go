package actors_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
)

// TestCrossedObjectReadSendsNoSecondExecute (issue 22): the answer to a
// read of object 5 that crossed an Execute sends no second one. A FOTA
// job's probe in DOWNLOADING (every sixth of T6) reads object 5 just as
// the device finishes its download: the State 2 notification sends the
// Execute, and the read's answer, State 2 with Update Result 0 from before
// that Execute reached the device, arrives in DOWNLOADED. Taken for a
// device that never got the Execute, it sent a second one (the PostgreSQL
// crash process test's "2 Executes, 1 install"; there the crossing reads
// came from recoveries while the store failed writes). Downlinks take
// longer than the device's answers here, so the crossing is certain on
// the fake clock.
func TestCrossedObjectReadSendsNoSecondExecute(t *testing.T) {
	cfg := actors.Config{PassivateAfter: 10 * time.Minute}
	probe := cfg.Default().Device.Download / 6
	clk := clocktest.New(epoch)
	up := &transport.LateUplinks{}
	tr, err := memtransport.New(memtransport.Config{Delays: memtransport.Delays{
		Network:  300 * time.Millisecond, // the Execute is still on its way ...
		Response: 10 * time.Millisecond,  // ... when the probe's read is answered
		Download: probe + 100*time.Millisecond,
	}}, clk, up, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	specs := fleet(1, 1, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	if err := tr.Add(specs[0]); err != nil {
		t.Fatal(err)
	}
	store := memstore.New()
	r := newRigConfig(t, cfg, clk, store, tr, up)
	t.Cleanup(r.e.Stop)
	ctx := context.Background()
	if err := tr.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.e.CreateTask(ctx, createTask("t", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	r.runUntil(r.finished("t"), 2*time.Hour)
	if v := r.task("t"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
		t.Fatalf("task: %v %+v", v.Status, v.Progress)
	}
	d, _ := tr.Device(specs[0].ID)
	if c := d.Counters; c.Executes != 1 || c.Upgrades != 1 {
		t.Fatalf("%d Executes, %d upgrades; want one each", c.Executes, c.Upgrades)
	}
	// The crossing happened: the probe read object 5 in DOWNLOADING (its
	// note is in the journal).
	probed := false
	err = store.Load(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: specs[0].ID}, 0, func(e persistence.Event) error {
		var ev messages.DeviceEvent
		if err := proto.Unmarshal(e.Payload, &ev); err != nil {
			return err
		}
		probed = probed || strings.HasPrefix(ev.GetNoted().GetText(), "DOWNLOADING for")
		return nil
	})
	if err != nil || !probed {
		t.Fatalf("no probe in DOWNLOADING (%v): the read did not cross the Execute", err)
	}
}
