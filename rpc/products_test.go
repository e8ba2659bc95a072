package rpc_test

import (
	"context"
	"fmt"
	"testing"

	"connectrpc.com/connect"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

func TestProducts(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	skip := true
	pcp := v1.SoftwareProtocol_SOFTWARE_PROTOCOL_PCP
	res, err := e.products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{
		Name: "water meter", Protocol: v1.Protocol_PROTOCOL_LWM2M, SoftwareProtocol: &pcp, SkipVersionCheck: &skip,
	}))
	if err != nil {
		t.Fatal(err)
	}
	p := res.Msg.GetProduct()
	if len(p.GetProductId()) != 24 || p.GetName() != "water meter" || p.GetProtocol() != v1.Protocol_PROTOCOL_LWM2M ||
		p.GetSoftwareProtocol() != pcp || !p.GetSkipVersionCheck() || p.GetCreateTime() == nil {
		t.Fatalf("created %v", p)
	}
	got, err := e.products.GetProduct(ctx, connect.NewRequest(&v1.GetProductRequest{ProductId: p.GetProductId()}))
	if err != nil || got.Msg.GetProduct().GetName() != "water meter" {
		t.Fatalf("GetProduct: %v %v", got, err)
	}

	// Paging: 5 products, pages of 2.
	for range 4 {
		e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	}
	var ids []string
	token := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("too many pages")
		}
		l, err := e.products.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{PageSize: 2, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range l.Msg.GetProducts() {
			ids = append(ids, p.GetProductId())
		}
		if token = l.Msg.GetNextPageToken(); token == "" {
			if pages != 2 {
				t.Errorf("%d pages, want 3", pages+1)
			}
			break
		}
	}
	if len(ids) != 5 {
		t.Fatalf("listed %d products", len(ids))
	}
	for i := 1; i < len(ids); i++ {
		if ids[i-1] >= ids[i] {
			t.Errorf("not in ID order: %v", ids)
		}
	}

	_, err = e.products.DeleteProduct(ctx, connect.NewRequest(&v1.DeleteProductRequest{ProductId: p.GetProductId()}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.products.GetProduct(ctx, connect.NewRequest(&v1.GetProductRequest{ProductId: p.GetProductId()}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = e.products.DeleteProduct(ctx, connect.NewRequest(&v1.DeleteProductRequest{ProductId: p.GetProductId()}))
	wantCode(t, err, connect.CodeNotFound)
}

func TestProductInUse(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pid := e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	if _, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{
		ProductId: pid, Devices: []*v1.NewDevice{{DeviceId: "d1"}},
	})); err != nil {
		t.Fatal(err)
	}
	_, err := e.products.DeleteProduct(ctx, connect.NewRequest(&v1.DeleteProductRequest{ProductId: pid}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	wantPlain(t, err, fmt.Sprintf(`product %q has devices (device "d1")`, pid))
	_, err = e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{
		ProductId: pid, Devices: []*v1.NewDevice{{DeviceId: "d1"}},
	}))
	wantCode(t, err, connect.CodeAlreadyExists)
	wantPlain(t, err, `device "d1"`)
}

func TestCreateProductInvalid(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pcp := v1.SoftwareProtocol_SOFTWARE_PROTOCOL_PCP
	bogusSP := v1.SoftwareProtocol(42)
	long := make([]byte, 129)
	for i := range long {
		long[i] = 'a'
	}
	for name, req := range map[string]*v1.CreateProductRequest{
		"no name":          {Protocol: v1.Protocol_PROTOCOL_MQTT},
		"long name":        {Name: string(long), Protocol: v1.Protocol_PROTOCOL_MQTT},
		"control in name":  {Name: "a\nb", Protocol: v1.Protocol_PROTOCOL_MQTT},
		"no protocol":      {Name: "x"},
		"unknown protocol": {Name: "x", Protocol: v1.Protocol(7)},
		"unknown software": {Name: "x", Protocol: v1.Protocol_PROTOCOL_LWM2M, SoftwareProtocol: &bogusSP},
		"pcp with mqtt":    {Name: "x", Protocol: v1.Protocol_PROTOCOL_MQTT, SoftwareProtocol: &pcp},
	} {
		_, err := e.products.CreateProduct(ctx, connect.NewRequest(req))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%s: got %v, want invalid_argument", name, err)
		}
	}
	if ps, _ := e.store.ListProducts(ctx, "", 10); len(ps) != 0 {
		t.Errorf("store has %d products", len(ps))
	}
	_, err := e.products.GetProduct(ctx, connect.NewRequest(&v1.GetProductRequest{ProductId: "a/b"}))
	wantCode(t, err, connect.CodeInvalidArgument)
	_, err = e.products.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{PageToken: "\x00"}))
	wantCode(t, err, connect.CodeInvalidArgument)
}

// TestUnknownEnumJSON sends an unknown enum number in Connect JSON.
func TestUnknownEnumJSON(t *testing.T) {
	e := newEnv(t)
	products := newJSONProducts(e)
	_, err := products.CreateProduct(context.Background(), connect.NewRequest(&v1.CreateProductRequest{Name: "x", Protocol: v1.Protocol(99)}))
	wantCode(t, err, connect.CodeInvalidArgument)
}
