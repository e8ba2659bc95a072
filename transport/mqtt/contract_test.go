package mqtt_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/otafleet/otafleet/bench/sim/mqttsim"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/mqtt"
	"github.com/otafleet/otafleet/transport/transporttest"
)

// contractMint mints download URLs on a download server that is not
// listening: the contract suite sends version queries only, never an
// upgrade, so no device downloads.
func contractMint(t *testing.T, st *memstore.Store, clk *clocktest.Clock) mint {
	t.Helper()
	dl, err := download.New(download.Config{Packages: st, Key: bytes.Repeat([]byte{7}, 32), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return mint{s: dl, base: "https://127.0.0.1:8943"}
}

// contractEpoch is the fake clocks' time: any will do, as long as the broker
// and its devices agree.
var contractEpoch = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func versionQuery(id string) *messages.Downlink {
	return &messages.Downlink{DeviceId: id, Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}}
}

// contractDevice starts a simulated device, stopped when the test ends at
// the latest; it returns the device's Stop.
func contractDevice(t *testing.T, cfg mqttsim.Config) func() {
	t.Helper()
	d, err := mqttsim.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d.Stop
}

// TestContractBroker runs the transport contract suite against the embedded
// broker on a loopback TCP port, with simulated IoTDA devices (paho) that log
// in with their secrets. Broker and devices share a fake clock (the login
// timestamps agree); the uplink bucket is off, since it would not refill on
// that clock.
func TestContractBroker(t *testing.T) {
	transporttest.Run(t, func(t *testing.T, up transport.Uplinks) transporttest.Adapter {
		ctx := context.Background()
		st := memstore.New()
		if err := st.PutProduct(ctx, persistence.Product{ID: "meter", Name: "meter", Protocol: persistence.ProtocolMQTT}); err != nil {
			t.Fatal(err)
		}
		clk := clocktest.New(contractEpoch)
		b, err := mqtt.NewBroker(mqtt.BrokerConfig{Addr: "127.0.0.1:0", Credentials: st, Uplinks: up,
			Downloads: contractMint(t, st, clk), UplinkRate: -1, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		return transporttest.Adapter{
			Downlinks: b,
			Connect: func(t *testing.T, id string) func() {
				t.Helper()
				if err := st.CreateDevices(ctx, []persistence.Device{{ID: id, ProductID: "meter", Secret: "secret-of-" + id}}); err != nil {
					t.Fatal(err)
				}
				return contractDevice(t, mqttsim.Config{Broker: "tcp://" + b.Addr("mqtt"), DeviceID: id, Secret: "secret-of-" + id,
					FwVersion: "1.0", Clock: clk})
			},
			VersionQuery:    versionQuery,
			Close:           b.Close,
			SeesConnections: true, // the connection and its end
			// ReportsNoRoute and ReportsClosed unset: Send publishes on the
			// device's down topic, which a device that is not connected
			// misses (Broker.Send).
		}
	})
}

// TestContractExternal runs the transport contract suite against the
// adapter to an external broker, a real Mosquitto on loopback, with
// simulated IoTDA devices that subscribe to their down topics themselves.
// Each subtest's adapter has a session (client ID) of its own.
func TestContractExternal(t *testing.T) {
	url := startMosquitto(t)
	transporttest.Run(t, func(t *testing.T, up transport.Uplinks) transporttest.Adapter {
		ctx := context.Background()
		st := memstore.New()
		clk := clocktest.New(contractEpoch)
		ext, err := mqtt.NewExternal(ctx, mqtt.ExternalConfig{Broker: url, ClientID: "otafleet-" + t.Name(), Uplinks: up,
			Downloads: contractMint(t, st, clk), Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		return transporttest.Adapter{
			Downlinks: ext,
			Connect: func(t *testing.T, id string) func() {
				t.Helper()
				return contractDevice(t, mqttsim.Config{Broker: url, DeviceID: id, Subscribe: true, FwVersion: "1.0", Clock: clk})
			},
			VersionQuery: versionQuery,
			Close:        ext.Close,
			// All unset: the adapter sees no connections (a device is
			// online when it reports) and publishes without knowing
			// whether anyone listens (External).
		}
	})
}
