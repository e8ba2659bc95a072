package rpc_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/rpc"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
	"github.com/otafleet/otafleet/transport"
)

// The API benchmarks run the handler over a real h2c socket on a Pebble
// store in b.TempDir() (fsynced writes) with a real engine on the fake
// clock; the devices never answer, so tasks stay PROCESSING.
//
//	go test ./rpc -run '^$' -bench . -benchtime 20x

// silentDownlinks drops every downlink: devices that never answer.
type silentDownlinks struct{}

func (silentDownlinks) Send(context.Context, *messages.Downlink) error           { return nil }
func (silentDownlinks) RevokeToken(context.Context, *messages.RevokeToken) error { return nil }

type benchAPI struct {
	st       *pebblestore.Store
	presence *transport.Presence
	eng      *actors.Engine
	products otafleetv1connect.ProductServiceClient
	devices  otafleetv1connect.DeviceServiceClient
	packages otafleetv1connect.PackageServiceClient
	tasks    otafleetv1connect.TaskServiceClient
}

func newBenchAPI(b *testing.B) *benchAPI {
	b.Helper()
	st, err := pebblestore.Open(b.TempDir(), pebblestore.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	clk := clocktest.New(time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC))
	eng, err := actors.New(actors.Config{}, actors.Deps{Store: st, Clock: clk, Transport: silentDownlinks{}})
	if err != nil {
		b.Fatal(err)
	}
	if err := eng.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(eng.Stop)
	presence := transport.NewPresence()
	h, err := rpc.NewHandler(rpc.Deps{Registry: st, Store: st, Engine: eng, Token: testToken, Clock: clk, Presence: presence})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	b.Cleanup(srv.Close)
	hc := (&env{}).client(testToken)
	return &benchAPI{
		st:       st,
		presence: presence,
		eng:      eng,
		products: otafleetv1connect.NewProductServiceClient(hc, srv.URL),
		devices:  otafleetv1connect.NewDeviceServiceClient(hc, srv.URL),
		packages: otafleetv1connect.NewPackageServiceClient(hc, srv.URL),
		tasks:    otafleetv1connect.NewTaskServiceClient(hc, srv.URL),
	}
}

func (a *benchAPI) product(b *testing.B) string {
	b.Helper()
	res, err := a.products.CreateProduct(context.Background(), connect.NewRequest(&v1.CreateProductRequest{Name: "meter", Protocol: v1.Protocol_PROTOCOL_MQTT}))
	if err != nil {
		b.Fatal(err)
	}
	return res.Msg.GetProduct().GetProductId()
}

// createDevices registers devices prefix+0 ... prefix+(n-1) with secrets,
// 10,000 per call.
func (a *benchAPI) createDevices(b *testing.B, product, prefix string, n int) {
	b.Helper()
	for start := 0; start < n; start += persistence.MaxCreateDevices {
		var devs []*v1.NewDevice
		for i := start; i < min(n, start+persistence.MaxCreateDevices); i++ {
			secret := fmt.Sprintf("secret-%d", i)
			devs = append(devs, &v1.NewDevice{DeviceId: fmt.Sprintf("%s%d", prefix, i), Secret: &secret})
		}
		if _, err := a.devices.CreateDevices(context.Background(), connect.NewRequest(&v1.CreateDevicesRequest{ProductId: product, Devices: devs})); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateDevices measures registering devices: one op is one call
// of 10,000 MQTT devices with secrets (sealed with AES-GCM), synced.
func BenchmarkCreateDevices(b *testing.B) {
	a := newBenchAPI(b)
	product := a.product(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a.createDevices(b, product, fmt.Sprintf("d%d-", i), persistence.MaxCreateDevices)
	}
	b.ReportMetric(float64(b.N*persistence.MaxCreateDevices)/b.Elapsed().Seconds(), "devices/s")
}

// BenchmarkGetTask measures GetTask with 1,000 and with 100,000 devices in
// four running tasks (every device actor has its job): one op is one call,
// from one client, on the tasks in turn. The ratio of the two is the cost
// of the fleet's size.
func BenchmarkGetTask(b *testing.B) {
	for _, devices := range []int{1000, 100_000} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) { benchGetTask(b, devices) })
	}
}

func benchGetTask(b *testing.B, devices int) {
	const tasks = 4
	a := newBenchAPI(b)
	ctx := context.Background()
	product := a.product(b)
	a.createDevices(b, product, "dev-", devices)
	pkg, err := a.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: product, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0", FileName: "fw.bin", Content: []byte("firmware"),
	}))
	if err != nil {
		b.Fatal(err)
	}
	var ids []string
	per := devices / tasks
	for t := range tasks {
		var targets []string
		for i := t * per; i < (t+1)*per; i++ {
			targets = append(targets, fmt.Sprintf("dev-%d", i))
		}
		res, err := a.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
			Name: fmt.Sprintf("wave_%d", t), TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE,
			PackageId: pkg.Msg.GetPackage().GetPackageId(), DeviceIds: targets,
		}))
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, res.Msg.GetTask().GetTaskId())
	}
	a.eng.Settle() // every device has its job
	for _, id := range ids {
		res, err := a.tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: id}))
		if err != nil {
			b.Fatal(err)
		}
		if p := res.Msg.GetTask().GetProgress(); p.GetTotal() != uint32(per) || p.GetProcessing() != uint32(per) {
			b.Fatalf("task %s: %v", id, p)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := a.tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: ids[i%tasks]})); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkListTaskDevices measures a ListTaskDevices page of 100 running
// devices (each with its job and stage) in a task of 1,000: one op is one
// call. Each row's stage is the device's; a page that asks each device's
// actor for it costs 100 asks (and waits behind whatever the actors have
// queued), one that reads what the actors publish does not.
//
//	go test ./rpc -run '^$' -bench ListTaskDevices -benchtime 200x
func BenchmarkListTaskDevices(b *testing.B) {
	const devices = 1000
	a := newBenchAPI(b)
	ctx := context.Background()
	product := a.product(b)
	a.createDevices(b, product, "dev-", devices)
	pkg, err := a.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: product, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0", FileName: "fw.bin", Content: []byte("firmware"),
	}))
	if err != nil {
		b.Fatal(err)
	}
	targets := make([]string, devices)
	for i := range targets {
		targets[i] = fmt.Sprintf("dev-%d", i)
	}
	res, err := a.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "pages", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE,
		PackageId: pkg.Msg.GetPackage().GetPackageId(), DeviceIds: targets,
	}))
	if err != nil {
		b.Fatal(err)
	}
	id := res.Msg.GetTask().GetTaskId()
	a.eng.Settle() // every device has its job
	req := &v1.ListTaskDevicesRequest{TaskId: id, PageSize: 100, PageToken: "500"}
	var page *v1.ListTaskDevicesResponse
	for b.Loop() {
		res, err := a.tasks.ListTaskDevices(ctx, connect.NewRequest(req))
		if err != nil {
			b.Fatal(err)
		}
		page = res.Msg
	}
	b.StopTimer()
	if ds := page.GetDevices(); len(ds) != 100 || ds[0].GetStatus() != v1.SubtaskStatus_SUBTASK_STATUS_PROCESSING || ds[0].GetStage() == "" {
		b.Fatalf("page: %d devices, first %v", len(ds), ds[0])
	}
}

// BenchmarkFleetSummary measures GetFleetSummary over 1,000 and 100,000
// registered devices of two products, half of them online: one op is one
// call. The ratio of the two is the cost of the fleet's size (none is
// expected: the answer is read from counters).
func BenchmarkFleetSummary(b *testing.B) {
	for _, devices := range []int{1000, 100_000} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) {
			a := newBenchAPI(b)
			ctx := context.Background()
			products := []string{a.product(b), a.product(b)}
			for i, p := range products {
				a.createDevices(b, p, fmt.Sprintf("p%d-", i), devices/2)
				for j := 0; j < devices/2; j += 2 {
					a.presence.Up(transport.ViaMQTT, fmt.Sprintf("p%d-%d", i, j), p)
				}
			}
			var res *connect.Response[v1.GetFleetSummaryResponse]
			for b.Loop() {
				var err error
				res, err = a.devices.GetFleetSummary(ctx, connect.NewRequest(&v1.GetFleetSummaryRequest{}))
				if err != nil {
					b.Fatal(err)
				}
			}
			if got := res.Msg.GetTotal(); got.GetRegistered() != int64(devices) || got.GetOnline() != int64(devices/2) {
				b.Fatalf("summary %v, want %d registered, %d online", got, devices, devices/2)
			}
		})
	}
}

// BenchmarkFleetCountAtStart measures what the fleet summary costs once,
// when the API handler is built: counting the registry's devices (a walk
// of 100,000 device records in Pebble). One op is one NewHandler.
func BenchmarkFleetCountAtStart(b *testing.B) {
	const devices = 100_000
	a := newBenchAPI(b)
	a.createDevices(b, a.product(b), "d-", devices)
	for b.Loop() {
		if _, err := rpc.NewHandler(rpc.Deps{Registry: a.st, Token: testToken}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(devices)/(b.Elapsed().Seconds()/float64(b.N)), "devices/s")
}
