package memtransport_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/transporttest"
)

// TestContract runs the transport contract suite against the in-memory
// transport with MQTT devices, on the real clock with short delays (the
// suite waits for answers in real time).
func TestContract(t *testing.T) {
	transporttest.Run(t, func(t *testing.T, up transport.Uplinks) transporttest.Adapter {
		tr, err := memtransport.New(memtransport.Config{Delays: memtransport.Delays{Network: time.Millisecond, Response: time.Millisecond}},
			clock.Real(), up, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		return transporttest.Adapter{
			Downlinks: tr,
			Connect: func(t *testing.T, id string) func() {
				t.Helper()
				if err := tr.Add(memtransport.DeviceSpec{ID: id, Protocol: messages.Protocol_PROTOCOL_MQTT, FwVersion: "1.0"}); err != nil {
					t.Fatal(err)
				}
				if err := tr.Connect(ctx, id); err != nil {
					t.Fatal(err)
				}
				return func() {
					if err := tr.Disconnect(ctx, id); err != nil && !errors.Is(err, memtransport.ErrClosed) {
						t.Errorf("Disconnect(%s): %v", id, err)
					}
				}
			},
			VersionQuery: func(id string) *messages.Downlink {
				return &messages.Downlink{DeviceId: id, Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}}
			},
			Close:           tr.Close,
			SeesConnections: true, // Connect and Disconnect deliver Connected and Disconnected
			ReportsNoRoute:  true, // ErrUnknownDevice, or the device is offline
			ReportsClosed:   true, // ErrClosed
		}
	})
}
