package rpc_test

import (
	"context"
	"testing"

	"connectrpc.com/connect"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// TestLwM2MSecurity: the LwM2M security mode is a product setting, shown by
// GetProduct; a PSK product's devices must have a PSK.
func TestLwM2MSecurity(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	create := func(proto v1.Protocol, mode *v1.Lwm2MSecurity) (*v1.Product, error) {
		t.Helper()
		res, err := e.products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "meter", Protocol: proto, Lwm2MSecurity: mode}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetProduct(), nil
	}
	psk, nosec := v1.Lwm2MSecurity_LWM2M_SECURITY_PSK, v1.Lwm2MSecurity_LWM2M_SECURITY_NOSEC
	for _, c := range []struct {
		proto v1.Protocol
		mode  *v1.Lwm2MSecurity
		want  v1.Lwm2MSecurity
	}{
		{v1.Protocol_PROTOCOL_LWM2M, nil, nosec},
		{v1.Protocol_PROTOCOL_LWM2M, &nosec, nosec},
		{v1.Protocol_PROTOCOL_LWM2M, &psk, psk},
		{v1.Protocol_PROTOCOL_MQTT, nil, v1.Lwm2MSecurity_LWM2M_SECURITY_UNSPECIFIED},
	} {
		p, err := create(c.proto, c.mode)
		if err != nil {
			t.Fatalf("CreateProduct %v %v: %v", c.proto, c.mode, err)
		}
		got, err := e.products.GetProduct(ctx, connect.NewRequest(&v1.GetProductRequest{ProductId: p.GetProductId()}))
		if err != nil {
			t.Fatal(err)
		}
		if p.GetLwm2MSecurity() != c.want || got.Msg.GetProduct().GetLwm2MSecurity() != c.want {
			t.Errorf("%v %v: created %v, read back %v, want %v", c.proto, c.mode, p.GetLwm2MSecurity(), got.Msg.GetProduct().GetLwm2MSecurity(), c.want)
		}
	}
	_, err := create(v1.Protocol_PROTOCOL_MQTT, &psk)
	wantCode(t, err, connect.CodeInvalidArgument)
	unknown := v1.Lwm2MSecurity(99)
	_, err = create(v1.Protocol_PROTOCOL_LWM2M, &unknown)
	wantCode(t, err, connect.CodeInvalidArgument)

	p, err := create(v1.Protocol_PROTOCOL_LWM2M, &psk)
	if err != nil {
		t.Fatal(err)
	}
	key := []byte("a-psk-of-32-bytes-for-the-device")
	_, err = e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: p.GetProductId(), Devices: []*v1.NewDevice{
		{DeviceId: "with-psk", Psk: key}, {DeviceId: "without-psk"},
	}}))
	wantCode(t, err, connect.CodeInvalidArgument)
	if _, err := e.devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: "with-psk"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("a refused call created a device: %v", err)
	}
	if _, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: p.GetProductId(), Devices: []*v1.NewDevice{
		{DeviceId: "with-psk", Psk: key},
	}})); err != nil {
		t.Fatalf("a device with a PSK: %v", err)
	}
	// A NOSEC product takes devices with and without PSK, as before.
	n, err := create(v1.Protocol_PROTOCOL_LWM2M, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: n.GetProductId(), Devices: []*v1.NewDevice{
		{DeviceId: "nosec-psk", Psk: key}, {DeviceId: "nosec-plain"},
	}})); err != nil {
		t.Fatalf("devices of a NOSEC product: %v", err)
	}
}
