package rpc_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

func newDevices(prefix string, n int) []*v1.NewDevice {
	ds := make([]*v1.NewDevice, n)
	for i := range ds {
		ds[i] = &v1.NewDevice{DeviceId: fmt.Sprintf("%s%d", prefix, i)}
	}
	return ds
}

func TestDevices(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pid := e.mustProduct(t, v1.Protocol_PROTOCOL_LWM2M, false)
	secret := "s3cret-ok"
	res, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{
		ProductId: pid,
		Devices: []*v1.NewDevice{
			{DeviceId: "dev-b", Secret: &secret},
			{DeviceId: "dev-a", Psk: []byte("sixteen-byte-psk")},
			{DeviceId: "dev-c"},
		},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.Msg.GetDeviceIds(), ","); got != "dev-b,dev-a,dev-c" {
		t.Errorf("device_ids %s", got)
	}
	creds, err := e.store.DeviceCredentials(ctx, "dev-b")
	if err != nil || creds.Secret != secret {
		t.Errorf("stored credentials %v %v", creds, err)
	}
	g, err := e.devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: "dev-a"}))
	if err != nil {
		t.Fatal(err)
	}
	d := g.Msg.GetDevice()
	if d.GetProductId() != pid || !d.GetHasPsk() || d.GetHasSecret() || d.GetOnline() || d.Rsrp != nil || d.GetCreateTime() == nil {
		t.Errorf("GetDevice %v", d)
	}
	l, err := e.devices.ListDevices(ctx, connect.NewRequest(&v1.ListDevicesRequest{PageSize: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Msg.GetDevices()) != 2 || l.Msg.GetNextPageToken() != "dev-b" {
		t.Fatalf("page 1: %v", l.Msg)
	}
	l, err = e.devices.ListDevices(ctx, connect.NewRequest(&v1.ListDevicesRequest{PageSize: 2, PageToken: l.Msg.GetNextPageToken()}))
	if err != nil || len(l.Msg.GetDevices()) != 1 || l.Msg.GetNextPageToken() != "" || l.Msg.GetDevices()[0].GetDeviceId() != "dev-c" {
		t.Fatalf("page 2: %v %v", l.Msg, err)
	}
	if _, err := e.devices.DeleteDevice(ctx, connect.NewRequest(&v1.DeleteDeviceRequest{DeviceId: "dev-a"})); err != nil {
		t.Fatal(err)
	}
	_, err = e.devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: "dev-a"}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = e.devices.DeleteDevice(ctx, connect.NewRequest(&v1.DeleteDeviceRequest{DeviceId: "dev-a"}))
	wantCode(t, err, connect.CodeNotFound)

	// Without an event store there is no timeline.
	_, err = e.devices.GetDeviceTimeline(ctx, connect.NewRequest(&v1.GetDeviceTimelineRequest{DeviceId: "dev-b"}))
	wantCode(t, err, connect.CodeUnavailable)
}

func TestCreateDevicesAllOrNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pid := e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	if _, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{
		ProductId: pid, Devices: []*v1.NewDevice{{DeviceId: "old"}},
	})); err != nil {
		t.Fatal(err)
	}
	dup := newDevices("d", 10)
	dup[7].DeviceId = "d2"
	exists := newDevices("e", 10)
	exists[9].DeviceId = "old"
	badID := newDevices("f", 5)
	badID[3].DeviceId = "a/b"
	longSecret := newDevices("g", 2)
	s := strings.Repeat("x", 257)
	longSecret[1].Secret = &s
	longPSK := newDevices("h", 2)
	longPSK[0].Psk = make([]byte, 65)
	shortSecret := newDevices("i", 3)
	s7 := "s3cret7"
	shortSecret[2].Secret = &s7
	shortSecretUTF8 := newDevices("j", 1)
	s7r := "äöüßéèê" // 7 characters in 14 bytes
	shortSecretUTF8[0].Secret = &s7r
	shortPSK := newDevices("k", 2)
	shortPSK[1].Psk = make([]byte, 15)
	badDeviceID := func(id string) []*v1.NewDevice {
		ds := newDevices("m", 3)
		ds[1].DeviceId = id
		return ds
	}
	for _, tc := range []struct {
		name    string
		req     *v1.CreateDevicesRequest
		code    connect.Code
		message string
	}{
		{"10001", &v1.CreateDevicesRequest{ProductId: pid, Devices: newDevices("x", 10001)}, connect.CodeInvalidArgument, "devices"},
		{"none", &v1.CreateDevicesRequest{ProductId: pid}, connect.CodeInvalidArgument, "devices"},
		{"duplicate", &v1.CreateDevicesRequest{ProductId: pid, Devices: dup}, connect.CodeAlreadyExists, `devices[7].device_id: "d2"`},
		{"exists", &v1.CreateDevicesRequest{ProductId: pid, Devices: exists}, connect.CodeAlreadyExists, `"old"`},
		{"unknown product", &v1.CreateDevicesRequest{ProductId: "nope", Devices: newDevices("p", 3)}, connect.CodeNotFound, "product_id"},
		{"no product", &v1.CreateDevicesRequest{Devices: newDevices("p", 3)}, connect.CodeInvalidArgument, "product_id"},
		{"bad id", &v1.CreateDevicesRequest{ProductId: pid, Devices: badID}, connect.CodeInvalidArgument, "devices[3].device_id"},
		{"long secret", &v1.CreateDevicesRequest{ProductId: pid, Devices: longSecret}, connect.CodeInvalidArgument, "devices[1].secret"},
		{"long psk", &v1.CreateDevicesRequest{ProductId: pid, Devices: longPSK}, connect.CodeInvalidArgument, "devices[0].psk"},
		{"short secret", &v1.CreateDevicesRequest{ProductId: pid, Devices: shortSecret}, connect.CodeInvalidArgument, "devices[2].secret: 7 characters, at least 8"},
		{"short secret in characters", &v1.CreateDevicesRequest{ProductId: pid, Devices: shortSecretUTF8}, connect.CodeInvalidArgument, "devices[0].secret: 7 characters, at least 8"},
		{"short psk", &v1.CreateDevicesRequest{ProductId: pid, Devices: shortPSK}, connect.CodeInvalidArgument, "devices[1].psk: 15 bytes, at least 16"},
		{"id with +", &v1.CreateDevicesRequest{ProductId: pid, Devices: badDeviceID("a+b")}, connect.CodeInvalidArgument, `devices[1].device_id: device ID "a+b" contains '+'`},
		{"id with #", &v1.CreateDevicesRequest{ProductId: pid, Devices: badDeviceID("a#")}, connect.CodeInvalidArgument, `devices[1].device_id: device ID "a#" contains '#'`},
		{"id with U+202E", &v1.CreateDevicesRequest{ProductId: pid, Devices: badDeviceID("evil\u202egpj.exe")}, connect.CodeInvalidArgument, `devices[1].device_id: device ID "evil\u202egpj.exe" contains the control or format character U+202E`},
		{"id with U+200B", &v1.CreateDevicesRequest{ProductId: pid, Devices: badDeviceID("a\u200bb")}, connect.CodeInvalidArgument, "U+200B"},
		{"id with U+0085", &v1.CreateDevicesRequest{ProductId: pid, Devices: badDeviceID("a\u0085b")}, connect.CodeInvalidArgument, "U+0085"},
		{"nil device", &v1.CreateDevicesRequest{ProductId: pid, Devices: []*v1.NewDevice{nil}}, connect.CodeInvalidArgument, "devices[0]"},
	} {
		_, err := e.devices.CreateDevices(ctx, connect.NewRequest(tc.req))
		if err == nil {
			t.Errorf("%s: accepted, want %v naming %s", tc.name, tc.code, tc.message)
			continue
		}
		if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.message) {
			t.Errorf("%s: got %v, want %v naming %s", tc.name, err, tc.code, tc.message)
		}
	}
	if ds, _ := e.store.ListDevices(ctx, "", 1000); len(ds) != 1 {
		t.Errorf("store has %d devices, want 1", len(ds))
	}

	// 10,000 is fine.
	res, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: newDevices("x", 10000)}))
	if err != nil || len(res.Msg.GetDeviceIds()) != 10000 {
		t.Fatalf("10,000 devices: %v", err)
	}
}
