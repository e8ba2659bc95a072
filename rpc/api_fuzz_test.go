package rpc

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// fuzzCall is one unary API method: a fresh request and the call.
type fuzzCall struct {
	name string
	req  func() proto.Message
	call func(ctx context.Context, m proto.Message) error
}

// unary adapts a handler method to fuzzCall.
func unary[Req, Res any](name string, h func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error)) fuzzCall {
	return fuzzCall{
		name: name,
		req:  func() proto.Message { return any(new(Req)).(proto.Message) },
		call: func(ctx context.Context, m proto.Message) error {
			_, err := h(ctx, connect.NewRequest(any(m).(*Req)))
			return err
		},
	}
}

// FuzzAPI sends a sequence of arbitrary requests to every unary method of
// the API over one registry and engine: the first byte of each chunk picks
// the method, the rest is its request. No request may panic or answer
// internal/unknown, and afterwards the registry must hold together: every
// device and package has its product, every package its file.
func FuzzAPI(f *testing.F) {
	ctx := context.Background()
	st := memstore.New()
	clk := clocktest.New(time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC))
	eng, err := actors.New(actors.Config{}, actors.Deps{Store: st, Clock: clk, Transport: dropDownlinks{}})
	if err != nil {
		f.Fatal(err)
	}
	if err := eng.Start(ctx); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(eng.Stop)
	// Known IDs for the fuzzer to hit (server-assigned ones are random).
	must := func(err error) {
		if err != nil {
			f.Fatal(err)
		}
	}
	must(st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolMQTT}))
	must(st.PutProduct(ctx, persistence.Product{ID: "q", Name: "q", Protocol: persistence.ProtocolLWM2M, SoftwarePCP: true}))
	must(st.CreateDevices(ctx, []persistence.Device{{ID: "d1", ProductID: "p"}, {ID: "d2", ProductID: "p"}, {ID: "e1", ProductID: "q"}}))
	must(st.PutGroup(ctx, persistence.Group{ID: "g", Name: "g", DeviceIDs: []string{"d1", "d2"}}))
	size, sum, err := st.WriteBlob(ctx, "k", strings.NewReader("firmware"), 100)
	must(err)
	must(st.PutPackage(ctx, persistence.Package{ID: "k", ProductID: "p", Type: persistence.PackageFirmware, Version: "2.0", FileName: "f", Size: size, SHA256: sum}))
	s := newServer(Deps{Registry: st, Engine: eng, Store: st, Token: "t", Clock: clk})
	ps, ds, gs, ks, ts := &productServer{server: s}, &deviceServer{server: s}, &groupServer{server: s}, &packageServer{server: s, chunks: newChunkUploads()}, &taskServer{server: s}
	calls := []fuzzCall{
		unary("CreateProduct", ps.CreateProduct), unary("GetProduct", ps.GetProduct),
		unary("ListProducts", ps.ListProducts), unary("DeleteProduct", ps.DeleteProduct),
		unary("CreateDevices", ds.CreateDevices), unary("GetDevice", ds.GetDevice), unary("ListDevices", ds.ListDevices),
		unary("DeleteDevice", ds.DeleteDevice), unary("GetDeviceTimeline", ds.GetDeviceTimeline),
		unary("CreateGroup", gs.CreateGroup), unary("AddDevices", gs.AddDevices), unary("RemoveDevices", gs.RemoveDevices),
		unary("GetGroup", gs.GetGroup), unary("ListGroups", gs.ListGroups), unary("DeleteGroup", gs.DeleteGroup),
		unary("CreatePackage", ks.CreatePackage), unary("GetPackage", ks.GetPackage),
		unary("ListPackages", ks.ListPackages), unary("DeletePackage", ks.DeletePackage),
		unary("CreateTask", ts.CreateTask), unary("GetTask", ts.GetTask), unary("ListTasks", ts.ListTasks),
		unary("StopTask", ts.StopTask), unary("RetryTask", ts.RetryTask), unary("ListTaskDevices", ts.ListTaskDevices),
		unary("UploadPackageChunk", ks.UploadPackageChunk), unary("ListTaskCells", ts.ListTaskCells),
	}
	f.Cleanup(ks.closeUploads)
	index := map[string]byte{}
	for i, c := range calls {
		index[c.name] = byte(i)
	}
	// chunk encodes one request: method byte, length (2 bytes), message.
	chunk := func(name string, m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return append([]byte{index[name], byte(len(b) >> 8), byte(len(b))}, b...)
	}
	seq := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	f.Add(seq(
		chunk("CreateProduct", &v1.CreateProductRequest{Name: "m", Protocol: v1.Protocol_PROTOCOL_MQTT}),
		chunk("ListProducts", &v1.ListProductsRequest{PageSize: 3}),
		chunk("CreateDevices", &v1.CreateDevicesRequest{ProductId: "p", Devices: []*v1.NewDevice{{DeviceId: "d1"}}}),
		chunk("CreateGroup", &v1.CreateGroupRequest{Name: "g", DeviceIds: []string{"d1", "d2"}}),
		chunk("CreateTask", &v1.CreateTaskRequest{Name: "t", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: "k", GroupIds: []string{"g"}}),
		chunk("ListTasks", &v1.ListTasksRequest{Status: v1.TaskStatus_TASK_STATUS_PROCESSING.Enum()}),
		chunk("ListTaskDevices", &v1.ListTaskDevicesRequest{TaskId: "t", PageToken: "9"}),
		chunk("GetDeviceTimeline", &v1.GetDeviceTimelineRequest{DeviceId: "d1", PageToken: "zz"}),
	))
	f.Add(seq(
		chunk("CreatePackage", &v1.CreatePackageRequest{ProductId: "p", PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0", FileName: "f", Content: []byte("x")}),
		chunk("DeletePackage", &v1.DeletePackageRequest{PackageId: "k"}),
		chunk("DeleteProduct", &v1.DeleteProductRequest{ProductId: "p"}),
		chunk("StopTask", &v1.StopTaskRequest{TaskId: "../t"}),
		chunk("RetryTask", &v1.RetryTaskRequest{TaskId: "t", DeviceIds: []string{""}}),
	))
	f.Add(seq(
		chunk("UploadPackageChunk", &v1.UploadPackageChunkRequest{
			Metadata:  &v1.UploadPackageMetadata{ProductId: "p", PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "3.0", FileName: "g"},
			TotalSize: 1, Data: []byte("x"), Sha256: "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}),
		chunk("UploadPackageChunk", &v1.UploadPackageChunkRequest{UploadId: "u", Offset: 5, Data: []byte("y")}),
		chunk("ListTaskCells", &v1.ListTaskCellsRequest{TaskId: "t", PageToken: "cell"}),
	))
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) >= 3 {
			c := calls[int(b[0])%len(calls)]
			n := int(b[1])<<8 | int(b[2])
			b = b[3:]
			n = min(n, len(b))
			req := c.req()
			raw := b[:n]
			b = b[n:]
			if proto.Unmarshal(raw, req) != nil {
				continue
			}
			if err := c.call(ctx, req); err != nil {
				var ce *connect.Error
				if !errors.As(err, &ce) || ce.Code() == connect.CodeInternal || ce.Code() == connect.CodeUnknown {
					t.Fatalf("%s(%v): %v", c.name, req, err)
				}
			}
		}
		eng.Settle()
		checkRegistry(t, st)
	})
}

// checkRegistry fails unless every device and package has its product and
// every package its file.
func checkRegistry(t *testing.T, st *memstore.Store) {
	t.Helper()
	ctx := context.Background()
	product := func(id string) {
		if _, err := st.GetProduct(ctx, id); err != nil {
			t.Fatalf("product %q: %v", id, err)
		}
	}
	for after := ""; ; {
		devs, err := st.ListDevices(ctx, after, persistence.MaxListLimit)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range devs {
			product(d.ProductID)
			after = d.ID
		}
		if len(devs) < persistence.MaxListLimit {
			break
		}
	}
	for after := ""; ; {
		pkgs, err := st.ListPackages(ctx, after, persistence.MaxListLimit)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pkgs {
			product(p.ProductID)
			blob, err := st.OpenBlob(ctx, p.ID)
			if err != nil {
				t.Fatalf("package %q: file: %v", p.ID, err)
			}
			if blob.Size() != p.Size || blob.SHA256() != p.SHA256 {
				t.Fatalf("package %q: file %d bytes, package says %d", p.ID, blob.Size(), p.Size)
			}
			blob.Close()
			after = p.ID
		}
		if len(pkgs) < persistence.MaxListLimit {
			break
		}
	}
}
