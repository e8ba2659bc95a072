package rpc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

type groupServer struct {
	*server
	// mu serializes the read-modify-write of AddDevices and RemoveDevices
	// (and DeleteGroup against them) so no change is lost.
	mu sync.Mutex
}

var _ otafleetv1connect.GroupServiceHandler = (*groupServer)(nil)

func groupToProto(g persistence.Group) *v1.Group {
	return &v1.Group{
		GroupId:    g.ID,
		Name:       g.Name,
		DeviceIds:  slices.Clone(g.DeviceIDs),
		CreateTime: timestamppb.New(g.Created),
	}
}

// checkDeviceIDs validates ids (field device_ids) and, when mustExist, that
// each is a registered device.
func (s *groupServer) checkDeviceIDs(ctx context.Context, op string, ids []string, mustExist bool) error {
	for i, id := range ids {
		field := fmt.Sprintf("device_ids[%d]", i)
		if err := checkID(field, id); err != nil {
			return err
		}
		if !mustExist {
			continue
		}
		if _, err := s.reg.GetDevice(ctx, id); err != nil {
			if errors.Is(err, persistence.ErrNotFound) {
				return notFound(field, "device", id)
			}
			return toConnect(s.log, op, err)
		}
	}
	return nil
}

// members returns ids sorted and without duplicates.
func members(ids []string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return slices.Compact(out)
}

func (s *groupServer) CreateGroup(ctx context.Context, req *connect.Request[v1.CreateGroupRequest]) (*connect.Response[v1.CreateGroupResponse], error) {
	if err := checkText("name", req.Msg.GetName(), true, maxNameRunes, false); err != nil {
		return nil, err
	}
	if err := s.checkDeviceIDs(ctx, "CreateGroup", req.Msg.GetDeviceIds(), true); err != nil {
		return nil, err
	}
	g := persistence.Group{
		ID:        newID(),
		Name:      req.Msg.GetName(),
		DeviceIDs: members(req.Msg.GetDeviceIds()),
		Created:   s.clock.Now(),
	}
	if err := s.reg.PutGroup(ctx, g); err != nil {
		return nil, toConnect(s.log, "CreateGroup", err)
	}
	return connect.NewResponse(&v1.CreateGroupResponse{Group: groupToProto(g)}), nil
}

// update applies change to group id's members under mu and stores the group.
func (s *groupServer) update(ctx context.Context, op, id string, change func([]string) []string) (persistence.Group, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.reg.GetGroup(ctx, id)
	if err != nil {
		return g, toConnect(s.log, op, err)
	}
	g.DeviceIDs = members(change(g.DeviceIDs))
	if err := s.reg.PutGroup(ctx, g); err != nil {
		return g, toConnect(s.log, op, err)
	}
	return g, nil
}

func (s *groupServer) AddDevices(ctx context.Context, req *connect.Request[v1.AddDevicesRequest]) (*connect.Response[v1.AddDevicesResponse], error) {
	if err := checkID("group_id", req.Msg.GetGroupId()); err != nil {
		return nil, err
	}
	if err := s.checkDeviceIDs(ctx, "AddDevices", req.Msg.GetDeviceIds(), true); err != nil {
		return nil, err
	}
	g, err := s.update(ctx, "AddDevices", req.Msg.GetGroupId(), func(ids []string) []string {
		return append(ids, req.Msg.GetDeviceIds()...)
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.AddDevicesResponse{Group: groupToProto(g)}), nil
}

func (s *groupServer) RemoveDevices(ctx context.Context, req *connect.Request[v1.RemoveDevicesRequest]) (*connect.Response[v1.RemoveDevicesResponse], error) {
	if err := checkID("group_id", req.Msg.GetGroupId()); err != nil {
		return nil, err
	}
	if err := s.checkDeviceIDs(ctx, "RemoveDevices", req.Msg.GetDeviceIds(), false); err != nil {
		return nil, err
	}
	drop := make(map[string]bool, len(req.Msg.GetDeviceIds()))
	for _, id := range req.Msg.GetDeviceIds() {
		drop[id] = true
	}
	g, err := s.update(ctx, "RemoveDevices", req.Msg.GetGroupId(), func(ids []string) []string {
		return slices.DeleteFunc(ids, func(id string) bool { return drop[id] })
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.RemoveDevicesResponse{Group: groupToProto(g)}), nil
}

func (s *groupServer) GetGroup(ctx context.Context, req *connect.Request[v1.GetGroupRequest]) (*connect.Response[v1.GetGroupResponse], error) {
	id := req.Msg.GetGroupId()
	if err := checkID("group_id", id); err != nil {
		return nil, err
	}
	g, err := s.reg.GetGroup(ctx, id)
	if err != nil {
		return nil, toConnect(s.log, "GetGroup", err)
	}
	return connect.NewResponse(&v1.GetGroupResponse{Group: groupToProto(g)}), nil
}

func (s *groupServer) ListGroups(ctx context.Context, req *connect.Request[v1.ListGroupsRequest]) (*connect.Response[v1.ListGroupsResponse], error) {
	if err := checkPageToken(req.Msg.GetPageToken()); err != nil {
		return nil, err
	}
	gs, next, err := listPage(ctx, req.Msg.GetPageSize(), req.Msg.GetPageToken(), s.reg.ListGroups, func(g persistence.Group) string { return g.ID })
	if err != nil {
		return nil, toConnect(s.log, "ListGroups", err)
	}
	out := &v1.ListGroupsResponse{NextPageToken: next, Groups: make([]*v1.Group, len(gs))}
	for i, g := range gs {
		out.Groups[i] = groupToProto(g)
	}
	return connect.NewResponse(out), nil
}

func (s *groupServer) DeleteGroup(ctx context.Context, req *connect.Request[v1.DeleteGroupRequest]) (*connect.Response[v1.DeleteGroupResponse], error) {
	id := req.Msg.GetGroupId()
	if err := checkID("group_id", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.reg.DeleteGroup(ctx, id); err != nil {
		return nil, toConnect(s.log, "DeleteGroup", err)
	}
	return connect.NewResponse(&v1.DeleteGroupResponse{}), nil
}
