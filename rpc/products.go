package rpc

import (
	"context"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// maxNameRunes bounds product and group names.
const maxNameRunes = 128

type productServer struct {
	*server
}

var _ otafleetv1connect.ProductServiceHandler = (*productServer)(nil)

func productToProto(p persistence.Product) *v1.Product {
	out := &v1.Product{
		ProductId:        p.ID,
		Name:             p.Name,
		SkipVersionCheck: p.SkipVersionCheck,
		CreateTime:       timestamppb.New(p.Created),
	}
	switch p.Protocol {
	case persistence.ProtocolMQTT:
		out.Protocol = v1.Protocol_PROTOCOL_MQTT
	case persistence.ProtocolLWM2M:
		out.Protocol = v1.Protocol_PROTOCOL_LWM2M
		out.Lwm2MSecurity = v1.Lwm2MSecurity_LWM2M_SECURITY_NOSEC
		if p.LwM2MSecurity == persistence.LwM2MPSK {
			out.Lwm2MSecurity = v1.Lwm2MSecurity_LWM2M_SECURITY_PSK
		}
	}
	if p.SoftwarePCP {
		out.SoftwareProtocol = v1.SoftwareProtocol_SOFTWARE_PROTOCOL_PCP
	}
	return out
}

// validateCreateProduct checks req and returns the product it describes,
// without ID and time.
func validateCreateProduct(req *v1.CreateProductRequest) (persistence.Product, error) {
	var p persistence.Product
	if err := checkText("name", req.GetName(), true, maxNameRunes, false); err != nil {
		return p, err
	}
	p.Name = req.GetName()
	switch req.GetProtocol() {
	case v1.Protocol_PROTOCOL_MQTT:
		p.Protocol = persistence.ProtocolMQTT
	case v1.Protocol_PROTOCOL_LWM2M:
		p.Protocol = persistence.ProtocolLWM2M
	case v1.Protocol_PROTOCOL_UNSPECIFIED:
		return p, invalid("protocol", "required: PROTOCOL_MQTT or PROTOCOL_LWM2M")
	default:
		return p, invalid("protocol", "unknown value %d", int32(req.GetProtocol()))
	}
	if req.SoftwareProtocol != nil {
		switch sp := req.GetSoftwareProtocol(); sp {
		case v1.SoftwareProtocol_SOFTWARE_PROTOCOL_UNSPECIFIED:
		case v1.SoftwareProtocol_SOFTWARE_PROTOCOL_PCP:
			if p.Protocol != persistence.ProtocolLWM2M {
				return p, invalid("software_protocol", "SOFTWARE_PROTOCOL_PCP needs PROTOCOL_LWM2M")
			}
			p.SoftwarePCP = true
		default:
			return p, invalid("software_protocol", "unknown value %d", int32(sp))
		}
	}
	switch m := req.GetLwm2MSecurity(); m {
	case v1.Lwm2MSecurity_LWM2M_SECURITY_UNSPECIFIED, v1.Lwm2MSecurity_LWM2M_SECURITY_NOSEC:
	case v1.Lwm2MSecurity_LWM2M_SECURITY_PSK:
		if p.Protocol != persistence.ProtocolLWM2M {
			return p, invalid("lwm2m_security", "LWM2M_SECURITY_PSK needs PROTOCOL_LWM2M")
		}
		p.LwM2MSecurity = persistence.LwM2MPSK
	default:
		return p, invalid("lwm2m_security", "unknown value %d", int32(m))
	}
	p.SkipVersionCheck = req.GetSkipVersionCheck()
	return p, nil
}

func (s *productServer) CreateProduct(ctx context.Context, req *connect.Request[v1.CreateProductRequest]) (*connect.Response[v1.CreateProductResponse], error) {
	p, err := validateCreateProduct(req.Msg)
	if err != nil {
		return nil, err
	}
	p.ID = newID()
	p.Created = s.clock.Now()
	if err := s.reg.PutProduct(ctx, p); err != nil {
		return nil, toConnect(s.log, "CreateProduct", err)
	}
	return connect.NewResponse(&v1.CreateProductResponse{Product: productToProto(p)}), nil
}

func (s *productServer) GetProduct(ctx context.Context, req *connect.Request[v1.GetProductRequest]) (*connect.Response[v1.GetProductResponse], error) {
	id := req.Msg.GetProductId()
	if err := checkID("product_id", id); err != nil {
		return nil, err
	}
	p, err := s.reg.GetProduct(ctx, id)
	if err != nil {
		return nil, toConnect(s.log, "GetProduct", err)
	}
	return connect.NewResponse(&v1.GetProductResponse{Product: productToProto(p)}), nil
}

func (s *productServer) ListProducts(ctx context.Context, req *connect.Request[v1.ListProductsRequest]) (*connect.Response[v1.ListProductsResponse], error) {
	if err := checkPageToken(req.Msg.GetPageToken()); err != nil {
		return nil, err
	}
	ps, next, err := listPage(ctx, req.Msg.GetPageSize(), req.Msg.GetPageToken(), s.reg.ListProducts, func(p persistence.Product) string { return p.ID })
	if err != nil {
		return nil, toConnect(s.log, "ListProducts", err)
	}
	out := &v1.ListProductsResponse{NextPageToken: next, Products: make([]*v1.Product, len(ps))}
	for i, p := range ps {
		out.Products[i] = productToProto(p)
	}
	return connect.NewResponse(out), nil
}

func (s *productServer) DeleteProduct(ctx context.Context, req *connect.Request[v1.DeleteProductRequest]) (*connect.Response[v1.DeleteProductResponse], error) {
	id := req.Msg.GetProductId()
	if err := checkID("product_id", id); err != nil {
		return nil, err
	}
	if err := s.reg.DeleteProduct(ctx, id); err != nil {
		return nil, toConnect(s.log, "DeleteProduct", err)
	}
	return connect.NewResponse(&v1.DeleteProductResponse{}), nil
}
