package rpc_test

import (
	"context"
	"fmt"
	"testing"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/rpc"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/transport"
)

// summary calls GetFleetSummary and renders it as "total r/o/off; p r/o/off; ...".
func summary(t *testing.T, e *env, product string) string {
	t.Helper()
	res, err := e.devices.GetFleetSummary(context.Background(), connect.NewRequest(&v1.GetFleetSummaryRequest{ProductId: product}))
	if err != nil {
		t.Fatal(err)
	}
	c := func(n *v1.DeviceCounts) string {
		return fmt.Sprintf("%d/%d/%d", n.GetRegistered(), n.GetOnline(), n.GetOffline())
	}
	s := "total " + c(res.Msg.GetTotal())
	for _, p := range res.Msg.GetProducts() {
		s += "; " + p.GetProductId() + " " + c(p.GetDevices())
	}
	return s
}

// TestFleetSummary: the counts start from the registry as it is when the
// API starts (more than one page of it), follow CreateDevices and
// DeleteDevice (a device deleted while online leaves both counts), and take
// online from the transports' presence, which GetDevice reports too.
func TestFleetSummary(t *testing.T) {
	ctx := context.Background()
	st := &blobLog{Store: memstore.New()}
	for _, p := range []persistence.Product{{ID: "meters", Name: "m", Protocol: persistence.ProtocolLWM2M}, {ID: "trackers", Name: "t", Protocol: persistence.ProtocolMQTT}} {
		if err := st.PutProduct(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	var ds []persistence.Device
	for i := range 2500 {
		ds = append(ds, persistence.Device{ID: fmt.Sprintf("m-%04d", i), ProductID: "meters"})
	}
	if err := st.CreateDevices(ctx, ds); err != nil {
		t.Fatal(err)
	}
	presence := transport.NewPresence()
	e := serve(t, st, rpc.Deps{Registry: st, Token: testToken, Presence: presence})

	if got, want := summary(t, e, ""), "total 2500/0/2500; meters 2500/0/2500"; got != want {
		t.Fatalf("at start: %s, want %s", got, want)
	}
	if _, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: "trackers", Devices: newDevices("t-", 3)})); err != nil {
		t.Fatal(err)
	}
	// A refused creation (a duplicate) counts nothing.
	_, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: "trackers", Devices: newDevices("t-", 4)}))
	wantCode(t, err, connect.CodeAlreadyExists)

	presence.Up(transport.ViaLwM2M, "m-0001", "meters")
	presence.Up(transport.ViaLwM2M, "m-0002", "meters")
	presence.Up(transport.ViaMQTT, "t-0", "trackers")
	presence.Up(transport.ViaMQTT, "t-1", "trackers")
	if got, want := summary(t, e, ""), "total 2503/4/2499; meters 2500/2/2498; trackers 3/2/1"; got != want {
		t.Fatalf("online: %s, want %s", got, want)
	}
	if got, want := summary(t, e, "trackers"), "total 3/2/1; trackers 3/2/1"; got != want {
		t.Fatalf("one product: %s, want %s", got, want)
	}
	for id, want := range map[string]bool{"t-0": true, "t-2": false, "m-0001": true, "m-0003": false} {
		g, err := e.devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: id}))
		if err != nil {
			t.Fatal(err)
		}
		if g.Msg.GetDevice().GetOnline() != want {
			t.Errorf("GetDevice(%s).online = %v, want %v", id, !want, want)
		}
	}

	// Deleted while online: out of both counts, and the transport's later
	// Down for it changes nothing.
	if _, err := e.devices.DeleteDevice(ctx, connect.NewRequest(&v1.DeleteDeviceRequest{DeviceId: "t-0"})); err != nil {
		t.Fatal(err)
	}
	_, err = e.devices.DeleteDevice(ctx, connect.NewRequest(&v1.DeleteDeviceRequest{DeviceId: "t-0"}))
	wantCode(t, err, connect.CodeNotFound)
	presence.Down(transport.ViaMQTT, "t-0")
	if _, err := e.devices.DeleteDevice(ctx, connect.NewRequest(&v1.DeleteDeviceRequest{DeviceId: "m-0003"})); err != nil {
		t.Fatal(err)
	}
	if got, want := summary(t, e, ""), "total 2501/3/2498; meters 2499/2/2497; trackers 2/1/1"; got != want {
		t.Fatalf("after deletions: %s, want %s", got, want)
	}
	// The last device of a product gone: the product leaves the list, but
	// asked for by name it is there with zeros.
	for _, id := range []string{"t-1", "t-2"} {
		if _, err := e.devices.DeleteDevice(ctx, connect.NewRequest(&v1.DeleteDeviceRequest{DeviceId: id})); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := summary(t, e, ""), "total 2499/2/2497; meters 2499/2/2497"; got != want {
		t.Fatalf("trackers empty: %s, want %s", got, want)
	}
	if got, want := summary(t, e, "trackers"), "total 0/0/0; trackers 0/0/0"; got != want {
		t.Fatalf("empty product: %s, want %s", got, want)
	}

	_, err = e.devices.GetFleetSummary(ctx, connect.NewRequest(&v1.GetFleetSummaryRequest{ProductId: "nope"}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = e.devices.GetFleetSummary(ctx, connect.NewRequest(&v1.GetFleetSummaryRequest{ProductId: "a/b"}))
	wantCode(t, err, connect.CodeInvalidArgument)
}

// TestFleetSummaryWithoutPresence: without the transports' presence (no
// device transport), every registered device counts offline.
func TestFleetSummaryWithoutPresence(t *testing.T) {
	e := newEnv(t)
	pid := e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	if _, err := e.devices.CreateDevices(context.Background(), connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: newDevices("d", 2)})); err != nil {
		t.Fatal(err)
	}
	if got, want := summary(t, e, ""), "total 2/0/2; "+pid+" 2/0/2"; got != want {
		t.Fatalf("%s, want %s", got, want)
	}
}
