package lwm2m_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/otafleet/otafleet/bench/sim/lwm2msim"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/lwm2m"
	"github.com/otafleet/otafleet/transport/transporttest"
)

// TestContract runs the transport contract suite against the LwM2M server on
// a loopback UDP port, with simulated LwM2M devices (each on its own socket)
// that register on Connect and de-register when taken away. Server and
// devices share a fake clock that never moves: no registration expires.
func TestContract(t *testing.T) {
	transporttest.Run(t, func(t *testing.T, up transport.Uplinks) transporttest.Adapter {
		ctx := context.Background()
		st := memstore.New()
		if err := st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolLWM2M}); err != nil {
			t.Fatal(err)
		}
		clk := clocktest.New(epoch)
		tokens, err := download.New(download.Config{Packages: st, Handles: st, Key: bytes.Repeat([]byte{7}, 32), Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		srv, err := lwm2m.New(lwm2m.Config{Addr: "127.0.0.1:0", Devices: st, Packages: st, Tokens: tokens, Uplinks: up, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		srv.Start()
		return transporttest.Adapter{
			Downlinks: srv,
			Connect: func(t *testing.T, id string) func() {
				t.Helper()
				if err := st.CreateDevices(ctx, []persistence.Device{{ID: id, ProductID: "p"}}); err != nil {
					t.Fatal(err)
				}
				d, err := lwm2msim.Start(ctx, lwm2msim.Config{Server: srv.Addr(), Endpoint: id, FwVersion: "1.0", Clock: clk})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(d.Stop)
				return d.Stop
			},
			VersionQuery: func(id string) *messages.Downlink {
				return &messages.Downlink{DeviceId: id, Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/3/0/3"}}}
			},
			Close:           srv.Close,
			SeesConnections: true, // registration and de-registration
			ReportsNoRoute:  true, // "not registered"
			ReportsClosed:   true, // Close forgets every registration
		}
	})
}
