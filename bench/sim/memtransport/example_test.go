package memtransport_test

import (
	"context"
	"fmt"
	"time"

	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
)

// printer is an Uplinks that prints what devices report.
type printer struct{ clk *clocktest.Clock }

func (p printer) Deliver(_ context.Context, id string, in *messages.DeviceInput) error {
	fmt.Printf("+%v %s: %s\n", p.clk.Since(start), id, compact(in.ProtoReflect()))
	return nil
}

func Example() {
	clk := clocktest.New(start)
	tr, err := memtransport.New(memtransport.Config{}, clk, printer{clk}, nil)
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	ctx := context.Background()
	_ = tr.Add(memtransport.DeviceSpec{ID: "meter-1", Protocol: messages.Protocol_PROTOCOL_MQTT, FwVersion: "1.0"})
	_ = tr.ConnectAll(ctx)
	_ = tr.Send(ctx, &messages.Downlink{DeviceId: "meter-1", Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{
		Job: &messages.Job{TaskId: "t1", Attempt: 1, Protocol: messages.Protocol_PROTOCOL_MQTT, Package: &messages.Package{Version: "2.0"}},
	}}})
	clk.Advance(time.Minute) // the whole upgrade, in no real time
	fmt.Printf("%+v\n", tr.Stats())
	// Output:
	// +0s meter-1: connected
	// +210ms meter-1: mqtt_progress{progress:0 version:1.0}
	// +610ms meter-1: mqtt_progress{progress:50 version:1.0}
	// +1.71s meter-1: mqtt_progress{progress:100 version:2.0}
	// {Downlinks:1 Dropped:0 Uplinks:4 DeliverErrors:0 UpgradeEvents:1 URIWrites:0 Executes:0 PCPNotifies:0 PCPExecutes:0 Segments:0 Downloads:1 Upgrades:1 Revocations:0}
}
