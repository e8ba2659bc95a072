package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/bench/sim/mqttsim"
	"github.com/otafleet/otafleet/internal/pgtest"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// mqttServe is a running `otafleet serve` with its MQTT broker and
// download server, and API clients.
type mqttServe struct {
	srv      *server
	dir      string
	addrs    map[string]string
	devices  otafleetv1connect.DeviceServiceClient
	products otafleetv1connect.ProductServiceClient
	packages otafleetv1connect.PackageServiceClient
	tasks    otafleetv1connect.TaskServiceClient
	// download trusts the server's self-signed download certificate.
	download *http.Client
}

func startMQTTServe(t *testing.T, ctx context.Context, dir string, extra ...string) *mqttServe {
	t.Helper()
	srv := startServer(t, append([]string{"--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--coap-addr", "", "--coaps-addr", "",
		"--download-addr", "127.0.0.1:0", "--log-format", "json"}, extra...)...)
	srv.await(ctx, "serving", msg("serving"))
	s := &mqttServe{srv: srv, dir: dir}
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil || json.Unmarshal(b, &s.addrs) != nil {
		t.Fatalf("addrs.json: %s %v", b, err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	hc := h2cClient(strings.TrimSpace(string(tok)))
	api := "http://" + s.addrs["api"]
	s.devices = otafleetv1connect.NewDeviceServiceClient(hc, api)
	s.products = otafleetv1connect.NewProductServiceClient(hc, api)
	s.packages = otafleetv1connect.NewPackageServiceClient(hc, api)
	s.tasks = otafleetv1connect.NewTaskServiceClient(hc, api)
	pem, err := os.ReadFile(filepath.Join(dir, "download-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("download-cert.pem holds no certificate")
	}
	s.download = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return s
}

// device starts a simulated MQTT device of this server.
func (s *mqttServe) device(ctx context.Context, id, secret, fw string) (*mqttsim.Device, error) {
	return mqttsim.Start(ctx, mqttsim.Config{Broker: "tcp://" + s.addrs["mqtt"], DeviceID: id, Secret: secret, FwVersion: fw, HTTPClient: s.download})
}

// upgrade runs a firmware task of package pkg over ids and waits for it to
// end; it returns the task's last state.
func (s *mqttServe) upgrade(t *testing.T, ctx context.Context, name, pkg string, ids []string) *v1.Task {
	t.Helper()
	task, err := s.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: name, TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: pkg, DeviceIds: ids,
	}))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := s.tasks.WatchTask(ctx, connect.NewRequest(&v1.WatchTaskRequest{TaskId: task.Msg.GetTask().GetTaskId()}))
	if err != nil {
		t.Fatal(err)
	}
	var last *v1.Task
	for stream.Receive() {
		last = stream.Msg().GetTask()
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	return last
}

// stop ends the server with SIGTERM and wants exit 0.
func (s *mqttServe) stop(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := s.srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err, _ := s.srv.wait(ctx); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
}

// TestStoreCopyProcess is the move from Pebble to PostgreSQL: a real
// `otafleet serve` on Pebble (its own seal key) registers MQTT devices, a
// package and runs a task to its end; it stops; `otafleet store copy`
// moves its store into a private PostgreSQL under a key file; `serve
// --store postgres://...` on it shows the devices, the package (its
// SHA-256), the finished task with its devices' history, and a device
// authenticates with its secret (a wrong one is refused) and downloads and
// verifies the package in a new task.
func TestStoreCopyProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Setenv(envSealKeyFile, "")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	pebbleDir := t.TempDir()
	a := startMQTTServe(t, ctx, pebbleDir)
	go func() {
		for range a.srv.lines {
		}
	}()
	prod, err := a.products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "Meter", Protocol: v1.Protocol_PROTOCOL_MQTT}))
	if err != nil {
		t.Fatal(err)
	}
	pid := prod.Msg.GetProduct().GetProductId()
	const n = 3
	var news []*v1.NewDevice
	var ids []string
	for i := range n {
		secret := fmt.Sprintf("secret-%d", i)
		news = append(news, &v1.NewDevice{DeviceId: fmt.Sprintf("m-%d", i), Secret: &secret})
		ids = append(ids, news[i].GetDeviceId())
	}
	if _, err := a.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: news})); err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("firmware-2.0 "), 20000) // 260 kB, several chunks
	pkg, err := a.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0", SourceVersions: []string{"1.0"},
		FileName: "meter-2.0.bin", Content: content,
	}))
	if err != nil {
		t.Fatal(err)
	}
	pkgID := pkg.Msg.GetPackage().GetPackageId()
	var sims []*mqttsim.Device
	for _, d := range news {
		sim, err := a.device(ctx, d.GetDeviceId(), d.GetSecret(), "1.0")
		if err != nil {
			t.Fatal(err)
		}
		sims = append(sims, sim)
	}
	first := a.upgrade(t, ctx, "meter_2_0", pkgID, ids)
	if first.GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS || first.GetProgress().GetSuccess() != n {
		t.Fatalf("the task on Pebble ended %v", first)
	}
	for _, sim := range sims {
		sim.Stop()
	}
	a.stop(t, ctx)

	dsn := pgtest.NewDatabase(t)
	key := writeKey(t, "seal.key", strings.Repeat("9d", 32)+"\n", 0o600)
	code, out, errs := runCLI("store", "copy", "--from", "pebble:"+filepath.Join(pebbleDir, "store"), "--to", dsn, "--seal-key-file", key)
	if code != 0 {
		t.Fatalf("store copy: exit %d\n%s%s", code, out, errs)
	}
	t.Log(strings.TrimSpace(out))

	b := startMQTTServe(t, ctx, t.TempDir(), "--store", dsn, "--seal-key-file", key)
	go func() {
		for range b.srv.lines {
		}
	}()
	list, err := b.devices.ListDevices(ctx, connect.NewRequest(&v1.ListDevicesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Msg.GetDevices()) != n {
		t.Fatalf("devices on PostgreSQL: %v", list.Msg.GetDevices())
	}
	got, err := b.packages.GetPackage(ctx, connect.NewRequest(&v1.GetPackageRequest{PackageId: pkgID}))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(content)
	if p := got.Msg.GetPackage(); p.GetSize() != int64(len(content)) || !strings.EqualFold(p.GetSha256(), fmt.Sprintf("%x", sum)) {
		t.Fatalf("package on PostgreSQL: %v, want %d bytes, SHA-256 %x", p, len(content), sum)
	}
	task, err := b.tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: first.GetTaskId()}))
	if err != nil {
		t.Fatal(err)
	}
	if tk := task.Msg.GetTask(); tk.GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS || tk.GetProgress().GetSuccess() != n {
		t.Fatalf("the task on PostgreSQL: %v", tk)
	}
	tl, err := b.devices.GetDeviceTimeline(ctx, connect.NewRequest(&v1.GetDeviceTimelineRequest{DeviceId: "m-1", PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	served := false
	for _, e := range tl.Msg.GetEntries() {
		served = served || strings.Contains(e.GetDetail(), fmt.Sprintf("of %d served (100%%)", len(content)))
	}
	if !served {
		t.Fatalf("the timeline of m-1 on PostgreSQL lacks its download: %v", tl.Msg.GetEntries())
	}

	// The secret was re-sealed: m-0 connects with it, not with another;
	// flashed back to 1.0, it downloads and verifies the copied package.
	if bad, err := b.device(ctx, "m-0", "not-the-secret", "1.0"); err == nil {
		bad.Stop()
		t.Fatal("m-0 connected with a wrong secret")
	}
	sim, err := b.device(ctx, "m-0", "secret-0", "1.0")
	if err != nil {
		t.Fatalf("m-0 with its secret, after the copy: %v", err)
	}
	defer sim.Stop()
	again := b.upgrade(t, ctx, "meter_2_0_again", pkgID, []string{"m-0"})
	if again.GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS || again.GetProgress().GetSuccess() != 1 {
		t.Fatalf("the task on PostgreSQL ended %v", again)
	}
	if fw, _ := sim.Versions(); fw != "2.0" || sim.Stats().BytesDownloaded != int64(len(content)) {
		t.Fatalf("m-0 after the task on PostgreSQL: fw %s, %+v", fw, sim.Stats())
	}
	b.stop(t, ctx)
}
