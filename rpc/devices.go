package rpc

import (
	"context"
	"fmt"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// Credential limits of NewDevice. The minimums keep a captured MQTT
// password or a DTLS handshake from being brute-forced offline in reach.
const (
	minSecretChars = 8
	maxSecretBytes = 256
	minPSKBytes    = 16
	maxPSKBytes    = 64
)

// deviceServer implements DeviceService; GetDeviceTimeline is in
// timeline.go.
type deviceServer struct {
	otafleetv1connect.UnimplementedDeviceServiceHandler
	*server
}

var _ otafleetv1connect.DeviceServiceHandler = (*deviceServer)(nil)

func deviceToProto(d persistence.Device) *v1.Device {
	return &v1.Device{
		DeviceId:   d.ID,
		ProductId:  d.ProductID,
		HasSecret:  d.HasSecret,
		HasPsk:     d.HasPSK,
		CreateTime: timestamppb.New(d.Created),
	}
}

// validateCreateDevices checks req on its own (the product's existence and
// the devices' novelty are the store's to check) and returns the devices,
// without creation time. An empty secret or PSK means none.
func validateCreateDevices(req *v1.CreateDevicesRequest) ([]persistence.Device, error) {
	if err := checkID("product_id", req.GetProductId()); err != nil {
		return nil, err
	}
	n := len(req.GetDevices())
	if n == 0 {
		return nil, invalid("devices", "at least one device is required")
	}
	if n > persistence.MaxCreateDevices {
		return nil, invalid("devices", "%d devices, at most %d per call", n, persistence.MaxCreateDevices)
	}
	ds := make([]persistence.Device, n)
	seen := make(map[string]int, n)
	for i, nd := range req.GetDevices() {
		field := fmt.Sprintf("devices[%d]", i)
		if nd == nil {
			return nil, invalid(field, "missing")
		}
		if err := checkDeviceID(field+".device_id", nd.GetDeviceId()); err != nil {
			return nil, err
		}
		if j, dup := seen[nd.GetDeviceId()]; dup {
			return nil, connect.NewError(connect.CodeAlreadyExists,
				fmt.Errorf("%s.device_id: %q repeats devices[%d]", field, nd.GetDeviceId(), j))
		}
		seen[nd.GetDeviceId()] = i
		if err := checkCredentials(field, nd.GetSecret(), nd.GetPsk()); err != nil {
			return nil, err
		}
		ds[i] = persistence.Device{
			ID:        nd.GetDeviceId(),
			ProductID: req.GetProductId(),
			Secret:    nd.GetSecret(),
		}
		if len(nd.GetPsk()) > 0 {
			ds[i].PSK = nd.GetPsk()
		}
	}
	return ds, nil
}

// checkCredentials checks a new device's secret and PSK (empty means none):
// a secret of minSecretChars characters to maxSecretBytes bytes in UTF-8, a
// PSK of minPSKBytes to maxPSKBytes bytes.
func checkCredentials(field, secret string, psk []byte) error {
	if secret != "" {
		if l := len(secret); l > maxSecretBytes {
			return invalid(field+".secret", "%d bytes, at most %d", l, maxSecretBytes)
		}
		if !utf8.ValidString(secret) {
			return invalid(field+".secret", "not valid UTF-8")
		}
		if n := utf8.RuneCountInString(secret); n < minSecretChars {
			return invalid(field+".secret", "%d characters, at least %d", n, minSecretChars)
		}
	}
	if l := len(psk); l > 0 && l < minPSKBytes {
		return invalid(field+".psk", "%d bytes, at least %d", l, minPSKBytes)
	}
	if l := len(psk); l > maxPSKBytes {
		return invalid(field+".psk", "%d bytes, at most %d", l, maxPSKBytes)
	}
	return nil
}

func (s *deviceServer) CreateDevices(ctx context.Context, req *connect.Request[v1.CreateDevicesRequest]) (*connect.Response[v1.CreateDevicesResponse], error) {
	ds, err := validateCreateDevices(req.Msg)
	if err != nil {
		return nil, err
	}
	p, err := s.product(ctx, "CreateDevices", req.Msg.GetProductId())
	if err != nil {
		return nil, err
	}
	for i, d := range ds {
		if err := p.CheckDevice(d); err != nil {
			return nil, invalid(fmt.Sprintf("devices[%d].psk", i), "%v", err)
		}
	}
	now := s.clock.Now()
	ids := make([]string, len(ds))
	for i := range ds {
		ds[i].Created = now
		ids[i] = ds[i].ID
	}
	if err := s.reg.CreateDevices(ctx, ds); err != nil {
		return nil, toConnect(s.log, "CreateDevices", err)
	}
	s.registered.add(p.ID, int64(len(ds)))
	s.presence.Registered(p.ID, ids)
	return connect.NewResponse(&v1.CreateDevicesResponse{DeviceIds: ids}), nil
}

func (s *deviceServer) GetDevice(ctx context.Context, req *connect.Request[v1.GetDeviceRequest]) (*connect.Response[v1.GetDeviceResponse], error) {
	id := req.Msg.GetDeviceId()
	if err := checkID("device_id", id); err != nil {
		return nil, err
	}
	d, err := s.reg.GetDevice(ctx, id)
	if err != nil {
		return nil, toConnect(s.log, "GetDevice", err)
	}
	out := deviceToProto(d)
	if s.engine != nil {
		view, err := s.engine.Device(ctx, id)
		if err != nil {
			return nil, toConnect(s.log, "GetDevice", err)
		}
		st := view.State
		out.Online = st.Online
		if st.HasFw {
			out.FwVersion = st.FwVersion
		}
		if st.HasSw {
			out.SwVersion = st.SwVersion
		}
		out.CellId = st.Radio.CellID
		if st.Radio.HasRSRP {
			out.Rsrp = &st.Radio.RSRP
		}
		if st.Radio.HasSINR {
			out.Sinr = &st.Radio.SINR
		}
	}
	if s.presence != nil {
		// The transports' sessions: the machine's journaled presence
		// outlives a restart that ended them.
		out.Online = s.presence.Online(id)
	}
	return connect.NewResponse(&v1.GetDeviceResponse{Device: out}), nil
}

// ListDevices returns the registry records; the live state is GetDevice's.
func (s *deviceServer) ListDevices(ctx context.Context, req *connect.Request[v1.ListDevicesRequest]) (*connect.Response[v1.ListDevicesResponse], error) {
	if err := checkPageToken(req.Msg.GetPageToken()); err != nil {
		return nil, err
	}
	ds, next, err := listPage(ctx, req.Msg.GetPageSize(), req.Msg.GetPageToken(), s.reg.ListDevices, func(d persistence.Device) string { return d.ID })
	if err != nil {
		return nil, toConnect(s.log, "ListDevices", err)
	}
	out := &v1.ListDevicesResponse{NextPageToken: next, Devices: make([]*v1.Device, len(ds))}
	for i, d := range ds {
		out.Devices[i] = deviceToProto(d)
	}
	return connect.NewResponse(out), nil
}

func (s *deviceServer) DeleteDevice(ctx context.Context, req *connect.Request[v1.DeleteDeviceRequest]) (*connect.Response[v1.DeleteDeviceResponse], error) {
	id := req.Msg.GetDeviceId()
	if err := checkID("device_id", id); err != nil {
		return nil, err
	}
	d, err := s.reg.GetDevice(ctx, id)
	if err != nil {
		return nil, toConnect(s.log, "DeleteDevice", err)
	}
	if err := s.reg.DeleteDevice(ctx, id); err != nil {
		return nil, toConnect(s.log, "DeleteDevice", err)
	}
	// Counted only by the call that deleted it (another one that read it
	// too fails with not_found).
	s.registered.add(d.ProductID, -1)
	s.presence.Forget(id)
	return connect.NewResponse(&v1.DeleteDeviceResponse{}), nil
}
