package rpc

import (
	"context"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// fuzzServer returns a server over a memstore holding product "p".
func fuzzServer(f *testing.F) *server {
	f.Helper()
	st := memstore.New()
	if err := st.PutProduct(context.Background(), persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolLWM2M, SoftwarePCP: true}); err != nil {
		f.Fatal(err)
	}
	return newServer(Deps{Registry: st, Token: "t"})
}

func seed(f *testing.F, m proto.Message) {
	f.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
}

// FuzzCreateDevices decodes arbitrary bytes into a CreateDevicesRequest and
// hands it to the handler: it must answer, never panic, and a success must
// store what it claims.
func FuzzCreateDevices(f *testing.F) {
	s := &deviceServer{server: fuzzServer(f)}
	secret := "s"
	seed(f, &v1.CreateDevicesRequest{ProductId: "p", Devices: []*v1.NewDevice{{DeviceId: "d1", Secret: &secret}, {DeviceId: "d2", Psk: []byte{1}}}})
	seed(f, &v1.CreateDevicesRequest{ProductId: "p", Devices: []*v1.NewDevice{{DeviceId: "d1"}, {DeviceId: "d1"}}})
	seed(f, &v1.CreateDevicesRequest{ProductId: "x/y", Devices: []*v1.NewDevice{{DeviceId: "\x00"}}})
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(v1.CreateDevicesRequest)
		if proto.Unmarshal(b, req) != nil {
			return
		}
		ctx := context.Background()
		res, err := s.CreateDevices(ctx, connect.NewRequest(req))
		if err != nil {
			if connect.CodeOf(err) == connect.CodeInternal || connect.CodeOf(err) == connect.CodeUnknown {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		for _, id := range res.Msg.GetDeviceIds() {
			if _, err := s.reg.GetDevice(ctx, id); err != nil {
				t.Fatalf("created %q but: %v", id, err)
			}
		}
	})
}

// FuzzCreatePackage decodes arbitrary bytes into a CreatePackageRequest and
// hands it to the handler: it must answer, never panic.
func FuzzCreatePackage(f *testing.F) {
	s := &packageServer{server: fuzzServer(f)}
	seed(f, &v1.CreatePackageRequest{ProductId: "p", PackageType: v1.PackageType_PACKAGE_TYPE_SOFTWARE, Version: "1.0",
		SourceVersions: []string{"0.9"}, FileName: "a.bin", Content: []byte("abc")})
	seed(f, &v1.CreatePackageRequest{ProductId: "p", PackageType: 7, Version: "1 0", FileName: "固件", Content: []byte{0}})
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(v1.CreatePackageRequest)
		if proto.Unmarshal(b, req) != nil {
			return
		}
		ctx := context.Background()
		res, err := s.CreatePackage(ctx, connect.NewRequest(req))
		if err != nil {
			if connect.CodeOf(err) == connect.CodeInternal || connect.CodeOf(err) == connect.CodeUnknown {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		p := res.Msg.GetPackage()
		if _, err := s.reg.GetPackage(ctx, p.GetPackageId()); err != nil {
			t.Fatalf("created %q but: %v", p.GetPackageId(), err)
		}
		if err := checkVersion("version", p.GetVersion(), false); err != nil {
			t.Fatalf("stored invalid version: %v", err)
		}
	})
}
