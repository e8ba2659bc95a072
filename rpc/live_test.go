package rpc_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/rpc"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// nopDownlinks drops every downlink.
type nopDownlinks struct{}

func (nopDownlinks) Send(context.Context, *messages.Downlink) error           { return nil }
func (nopDownlinks) RevokeToken(context.Context, *messages.RevokeToken) error { return nil }

// TestGetDeviceLiveState reads a device's presence, versions and radio from
// a running engine.
func TestGetDeviceLiveState(t *testing.T) {
	ctx := context.Background()
	st := &blobLog{Store: memstore.New()}
	clk := clocktest.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	eng, err := actors.New(actors.Config{}, actors.Deps{Store: st, Clock: clk, Transport: nopDownlinks{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Stop)
	e := serve(t, st, rpc.Deps{Registry: st, Engine: eng, Token: testToken, Clock: clk})
	pid := e.mustProduct(t, v1.Protocol_PROTOCOL_LWM2M, false)
	if _, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: newDevices("d", 2)})); err != nil {
		t.Fatal(err)
	}
	fw, rsrp, sinr := "1.2.3", int32(-97), int32(-3)
	for _, in := range []*messages.DeviceInput{
		{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}},
		{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: &fw}}},
		{Kind: &messages.DeviceInput_RadioReported{RadioReported: &messages.RadioReported{Rsrp: &rsrp, Sinr: &sinr, CellId: "cell-7"}}},
	} {
		if err := eng.Deliver(ctx, "d0", in); err != nil {
			t.Fatal(err)
		}
	}
	eng.Settle()
	res, err := e.devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: "d0"}))
	if err != nil {
		t.Fatal(err)
	}
	d := res.Msg.GetDevice()
	if !d.GetOnline() || d.GetFwVersion() != fw || d.GetSwVersion() != "" || d.GetCellId() != "cell-7" ||
		d.Rsrp == nil || d.GetRsrp() != rsrp || d.Sinr == nil || d.GetSinr() != sinr ||
		!d.GetCreateTime().AsTime().Equal(clk.Now()) {
		t.Errorf("live device %v", d)
	}
	res, err = e.devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: "d1"}))
	if err != nil {
		t.Fatal(err)
	}
	if d := res.Msg.GetDevice(); d.GetOnline() || d.GetFwVersion() != "" || d.Rsrp != nil || d.Sinr != nil {
		t.Errorf("silent device %v", d)
	}
}
