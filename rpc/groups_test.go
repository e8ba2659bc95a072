package rpc_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

func TestGroups(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pid := e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	if _, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: newDevices("d", 5)})); err != nil {
		t.Fatal(err)
	}
	res, err := e.groups.CreateGroup(ctx, connect.NewRequest(&v1.CreateGroupRequest{Name: "north", DeviceIds: []string{"d3", "d1", "d3"}}))
	if err != nil {
		t.Fatal(err)
	}
	g := res.Msg.GetGroup()
	gid := g.GetGroupId()
	if len(gid) != 24 || g.GetName() != "north" || strings.Join(g.GetDeviceIds(), ",") != "d1,d3" {
		t.Fatalf("created %v", g)
	}
	add, err := e.groups.AddDevices(ctx, connect.NewRequest(&v1.AddDevicesRequest{GroupId: gid, DeviceIds: []string{"d0", "d1"}}))
	if err != nil || strings.Join(add.Msg.GetGroup().GetDeviceIds(), ",") != "d0,d1,d3" {
		t.Fatalf("AddDevices: %v %v", add, err)
	}
	_, err = e.groups.AddDevices(ctx, connect.NewRequest(&v1.AddDevicesRequest{GroupId: gid, DeviceIds: []string{"d4", "ghost"}}))
	if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), "device_ids[1]") {
		t.Fatalf("AddDevices ghost: %v", err)
	}
	rm, err := e.groups.RemoveDevices(ctx, connect.NewRequest(&v1.RemoveDevicesRequest{GroupId: gid, DeviceIds: []string{"d1", "ghost"}}))
	if err != nil || strings.Join(rm.Msg.GetGroup().GetDeviceIds(), ",") != "d0,d3" {
		t.Fatalf("RemoveDevices: %v %v", rm, err)
	}
	got, err := e.groups.GetGroup(ctx, connect.NewRequest(&v1.GetGroupRequest{GroupId: gid}))
	if err != nil || strings.Join(got.Msg.GetGroup().GetDeviceIds(), ",") != "d0,d3" {
		t.Fatalf("GetGroup: %v %v", got, err)
	}
	if _, err := e.groups.CreateGroup(ctx, connect.NewRequest(&v1.CreateGroupRequest{Name: "empty"})); err != nil {
		t.Fatal(err)
	}
	l, err := e.groups.ListGroups(ctx, connect.NewRequest(&v1.ListGroupsRequest{}))
	if err != nil || len(l.Msg.GetGroups()) != 2 || l.Msg.GetNextPageToken() != "" {
		t.Fatalf("ListGroups: %v %v", l, err)
	}
	if _, err := e.groups.DeleteGroup(ctx, connect.NewRequest(&v1.DeleteGroupRequest{GroupId: gid})); err != nil {
		t.Fatal(err)
	}
	_, err = e.groups.GetGroup(ctx, connect.NewRequest(&v1.GetGroupRequest{GroupId: gid}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = e.groups.AddDevices(ctx, connect.NewRequest(&v1.AddDevicesRequest{GroupId: gid, DeviceIds: []string{"d0"}}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = e.groups.DeleteGroup(ctx, connect.NewRequest(&v1.DeleteGroupRequest{GroupId: gid}))
	wantCode(t, err, connect.CodeNotFound)
}

func TestCreateGroupInvalid(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for name, tc := range map[string]struct {
		req  *v1.CreateGroupRequest
		code connect.Code
	}{
		"no name":        {&v1.CreateGroupRequest{}, connect.CodeInvalidArgument},
		"bad device id":  {&v1.CreateGroupRequest{Name: "g", DeviceIds: []string{""}}, connect.CodeInvalidArgument},
		"unknown device": {&v1.CreateGroupRequest{Name: "g", DeviceIds: []string{"ghost"}}, connect.CodeNotFound},
	} {
		_, err := e.groups.CreateGroup(ctx, connect.NewRequest(tc.req))
		if connect.CodeOf(err) != tc.code {
			t.Errorf("%s: got %v, want %v", name, err, tc.code)
		}
	}
	if gs, _ := e.store.ListGroups(ctx, "", 10); len(gs) != 0 {
		t.Errorf("store has %d groups", len(gs))
	}
}
