package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/bench/sim/lwm2msim"
	"github.com/otafleet/otafleet/bench/sim/mqttsim"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// e2e is a running `otafleet serve` with Go clients and the CLI binary.
type e2e struct {
	t        *testing.T
	dir, api string
	token    string
	loginURL string // the one-time console login URL serve logged
	http     *http.Client
	products otafleetv1connect.ProductServiceClient
	devices  otafleetv1connect.DeviceServiceClient
	groups   otafleetv1connect.GroupServiceClient
	packages otafleetv1connect.PackageServiceClient
	tasks    otafleetv1connect.TaskServiceClient
}

// startE2E starts the server on port 0 with n simulated MQTT devices
// (sim-0 ... sim-n-1) and waits for its addresses. extra flags come last,
// so they win over the defaults here.
func startE2E(t *testing.T, n int, extra ...string) *e2e {
	t.Helper()
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--coap-addr", "127.0.0.1:0", "--coaps-addr", "127.0.0.1:0", "--download-addr", "127.0.0.1:0", "--log-format", "json",
		"--simulate", fmt.Sprint(n), "--simulate-protocol", "mqtt", "--simulate-delay", "20ms"}
	srv := startServer(t, append(args, extra...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	login := srv.await(ctx, "the console login URL", msg("console login (one use, 15 min)"))
	srv.await(ctx, "serving", msg("serving"))
	go func() { // keep the log pipe drained
		for range srv.lines {
		}
	}()
	var addrs map[string]string
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil || json.Unmarshal(b, &addrs) != nil || addrs["api"] == "" || addrs["mqtt"] == "" || addrs["download"] == "" {
		t.Fatalf("addrs.json: %s %v", b, err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	loginURL, _ := login["url"].(string)
	e := &e2e{t: t, dir: dir, api: "http://" + addrs["api"], token: strings.TrimSpace(string(tok)), loginURL: loginURL}
	e.http = h2cClient(e.token)
	e.products = otafleetv1connect.NewProductServiceClient(e.http, e.api)
	e.devices = otafleetv1connect.NewDeviceServiceClient(e.http, e.api)
	e.groups = otafleetv1connect.NewGroupServiceClient(e.http, e.api)
	e.packages = otafleetv1connect.NewPackageServiceClient(e.http, e.api)
	e.tasks = otafleetv1connect.NewTaskServiceClient(e.http, e.api)
	return e
}

// h2cClient speaks HTTP/2 without TLS and sends token ("" for none).
func h2cClient(token string) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	var rt http.RoundTripper = &http.Transport{Protocols: p}
	if token != "" {
		rt = bearerTransport{token: token, next: rt}
	}
	return &http.Client{Transport: rt}
}

// cli runs the otafleet binary with args (and --data-dir) and returns its
// stdout, stderr and exit code.
func (e *e2e) cli(args ...string) (string, string, int) {
	e.t.Helper()
	cmd := exec.Command(os.Args[0], append(args, "--data-dir", e.dir)...)
	cmd.Env = append(os.Environ(), "OTAFLEET_TEST_MAIN=1", envToken+"=", envAPI+"=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// cliJSON runs the CLI with --json, wants exit 0 and decodes stdout.
func (e *e2e) cliJSON(out any, args ...string) {
	e.t.Helper()
	stdout, stderr, code := e.cli(append(args, "--json")...)
	if code != 0 {
		e.t.Fatalf("otafleet %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		e.t.Fatalf("otafleet %s: %v in %q", strings.Join(args, " "), err, stdout)
	}
}

func wantConnectCode(t *testing.T, what string, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
}

// TestEndToEndGoClient drives the API of a real server with the Connect Go
// client: registry, a task to simulated devices watched to its end, its
// devices and a timeline; then the requests that must fail and change
// nothing.
func TestEndToEndGoClient(t *testing.T) {
	e := startE2E(t, 6)
	ctx := context.Background()
	prod, err := e.products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "Tracker", Protocol: v1.Protocol_PROTOCOL_MQTT}))
	if err != nil {
		t.Fatal(err)
	}
	pid := prod.Msg.GetProduct().GetProductId()
	var devs []*v1.NewDevice
	for i := range 6 {
		secret := fmt.Sprintf("secret-%d", i)
		devs = append(devs, &v1.NewDevice{DeviceId: fmt.Sprintf("sim-%d", i), Secret: &secret})
	}
	if _, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: devs})); err != nil {
		t.Fatal(err)
	}
	grp, err := e.groups.CreateGroup(ctx, connect.NewRequest(&v1.CreateGroupRequest{Name: "first", DeviceIds: []string{"sim-0", "sim-1", "sim-2"}}))
	if err != nil {
		t.Fatal(err)
	}
	pkg, err := e.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0", SourceVersions: []string{"1.0"},
		FileName: "tracker-2.0.bin", Content: bytes.Repeat([]byte("fw"), 5000),
	}))
	if err != nil {
		t.Fatal(err)
	}
	task, err := e.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "tracker_2_0", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: pkg.Msg.GetPackage().GetPackageId(),
		DeviceIds: []string{"sim-3", "sim-4", "sim-5"}, GroupIds: []string{grp.Msg.GetGroup().GetGroupId()},
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := task.Msg.GetTask().GetTaskId()

	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	stream, err := e.tasks.WatchTask(wctx, connect.NewRequest(&v1.WatchTaskRequest{TaskId: id}))
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
	if last.GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS || last.GetProgress().GetSuccess() != 6 || last.GetFinishTime() == nil {
		t.Fatalf("watched to %v", last)
	}
	ld, err := e.tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: id}))
	if err != nil || len(ld.Msg.GetDevices()) != 6 {
		t.Fatalf("ListTaskDevices: %v %v", ld, err)
	}
	for _, d := range ld.Msg.GetDevices() {
		if d.GetStatus() != v1.SubtaskStatus_SUBTASK_STATUS_SUCCESS || d.GetAttempts() != 1 || d.GetSourceVersion() != "1.0" ||
			d.GetUpdateTime() == nil || d.GetUpdateTime().AsTime().After(last.GetFinishTime().AsTime()) {
			t.Errorf("device %v", d)
		}
	}
	dev, err := e.devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: "sim-4"}))
	if err != nil || dev.Msg.GetDevice().GetFwVersion() != "2.0" || !dev.Msg.GetDevice().GetOnline() || !dev.Msg.GetDevice().GetHasSecret() {
		t.Fatalf("GetDevice: %v %v", dev, err)
	}
	tl, err := e.devices.GetDeviceTimeline(ctx, connect.NewRequest(&v1.GetDeviceTimelineRequest{DeviceId: "sim-4", TaskId: &id}))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, en := range tl.Msg.GetEntries() {
		kinds = append(kinds, en.GetKind()+": "+en.GetDetail())
	}
	if got := strings.Join(kinds, "\n"); !strings.Contains(got, "reported fw_version 2.0") || !strings.Contains(got, "finished SUCCESS") {
		t.Fatalf("timeline of sim-4:\n%s", got)
	}

	// Requests that must fail, and change nothing.
	before := e.snapshot(ctx)
	_, err = h2cProducts(e, "").ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
	wantConnectCode(t, "no token", err, connect.CodeUnauthenticated)
	_, err = h2cProducts(e, "wrong-token").CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "x", Protocol: v1.Protocol_PROTOCOL_MQTT}))
	wantConnectCode(t, "wrong token", err, connect.CodeUnauthenticated)
	_, err = e.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "3.0", FileName: "big.bin", Content: make([]byte, 9<<20),
	}))
	wantConnectCode(t, "9 MiB inline package", err, connect.CodeResourceExhausted)
	many := make([]string, 30001)
	for i := range many {
		many[i] = fmt.Sprintf("sim-%d", i)
	}
	_, err = e.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "too_many", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: pkg.Msg.GetPackage().GetPackageId(), DeviceIds: many,
	}))
	wantConnectCode(t, "30,001 targets", err, connect.CodeInvalidArgument)
	_, err = e.tasks.StopTask(ctx, connect.NewRequest(&v1.StopTaskRequest{TaskId: id}))
	wantConnectCode(t, "stopping a finished task", err, connect.CodeFailedPrecondition)
	_, err = e.tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: "no-such-task"}))
	wantConnectCode(t, "unknown task", err, connect.CodeNotFound)
	for _, c := range []struct{ what, path, body, code string }{
		{"malformed JSON", "ProductService/CreateProduct", `{"name": "x", "protocol": `, "invalid_argument"},
		{"unknown enum", "ProductService/CreateProduct", `{"name": "x", "protocol": "PROTOCOL_COAP"}`, "invalid_argument"},
		{"unknown enum number", "TaskService/ListTasks", `{"status": 99}`, "invalid_argument"},
		{"wrong field type", "DeviceService/CreateDevices", `{"productId": ["x"]}`, "invalid_argument"},
	} {
		if got := e.postJSON(c.path, c.body); got != c.code {
			t.Errorf("%s: code %q, want %q", c.what, got, c.code)
		}
	}
	if after := e.snapshot(ctx); after != before {
		t.Fatalf("the failed requests changed the registry:\nbefore %s\nafter  %s", before, after)
	}
}

func h2cProducts(e *e2e, token string) otafleetv1connect.ProductServiceClient {
	return otafleetv1connect.NewProductServiceClient(h2cClient(token), e.api)
}

// postJSON posts a Connect JSON body with the token and returns the error
// code of the answer ("" for success).
func (e *e2e) postJSON(path, body string) string {
	e.t.Helper()
	req, err := http.NewRequest("POST", e.api+"/otafleet.v1."+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	var ce struct{ Code string }
	_ = json.Unmarshal(b, &ce)
	return ce.Code
}

// snapshot summarises the registry and the tasks, to compare.
func (e *e2e) snapshot(ctx context.Context) string {
	e.t.Helper()
	p, err1 := e.products.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{PageSize: 1000}))
	d, err2 := e.devices.ListDevices(ctx, connect.NewRequest(&v1.ListDevicesRequest{PageSize: 1000}))
	k, err3 := e.packages.ListPackages(ctx, connect.NewRequest(&v1.ListPackagesRequest{PageSize: 1000}))
	g, err4 := e.groups.ListGroups(ctx, connect.NewRequest(&v1.ListGroupsRequest{PageSize: 1000}))
	ts, err5 := e.tasks.ListTasks(ctx, connect.NewRequest(&v1.ListTasksRequest{PageSize: 1000}))
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		e.t.Fatal(err)
	}
	var tasks []string
	for _, t := range ts.Msg.GetTasks() {
		tasks = append(tasks, t.GetTaskId()+":"+t.GetStatus().String())
	}
	return fmt.Sprintf("products %d devices %d packages %d groups %d tasks %v",
		len(p.Msg.GetProducts()), len(d.Msg.GetDevices()), len(k.Msg.GetPackages()), len(g.Msg.GetGroups()), tasks)
}

// TestEndToEndCLI drives the same server with the CLI binary, as the
// README's tour does.
func TestEndToEndCLI(t *testing.T) {
	e := startE2E(t, 12)
	var prod struct{ Product struct{ ProductID string } }
	e.cliJSON(&prod, "product", "create", "--name", "Meter", "--protocol", "mqtt")
	pid := prod.Product.ProductID
	if pid == "" {
		t.Fatal("no product ID")
	}
	var created struct{ DeviceIDs []string }
	e.cliJSON(&created, "device", "create", "--product", pid, "--prefix", "sim-", "--count", "11", "--secret", "s3cret-meter")
	if len(created.DeviceIDs) != 11 {
		t.Fatalf("created %v", created)
	}
	if out, errOut, code := e.cli("device", "create", "--product", pid, "sim-11", "--secret", "s3cret-meter"); code != 0 || out != "created 1 device of product "+pid+"\n" {
		t.Fatalf("device create of one device: exit %d\n%s%s", code, out, errOut)
	}
	var grp struct{ Group struct{ GroupID string } }
	e.cliJSON(&grp, "group", "create", "--name", "north", "sim-0", "sim-1")
	if out, errOut, code := e.cli("group", "add", grp.Group.GroupID, "sim-2", "sim-3"); code != 0 || !strings.Contains(out, "4: sim-0 sim-1 sim-2 sim-3") {
		t.Fatalf("group add: %d %s %s", code, out, errOut)
	}

	file := filepath.Join(t.TempDir(), "meter-2.0.bin")
	if err := os.WriteFile(file, bytes.Repeat([]byte("0123456789abcdef"), 300_000), 0o600); err != nil { // 4.8 MB: five chunks
		t.Fatal(err)
	}
	out, errOut, code := e.cli("package", "upload", "--product", pid, "--type", "firmware", "--version", "2.0", "--source-version", "1.0", "--progress", "always", file)
	if code != 0 || !strings.Contains(out, "meter-2.0.bin") || !strings.Contains(errOut, "100%") {
		t.Fatalf("package upload: exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
	var pkgs struct {
		Packages []struct{ PackageID, Size, Sha256 string }
	}
	e.cliJSON(&pkgs, "package", "list")
	if len(pkgs.Packages) != 1 || pkgs.Packages[0].Size != "4800000" {
		t.Fatalf("packages %+v", pkgs)
	}

	var task struct{ Task struct{ TaskID string } }
	e.cliJSON(&task, "task", "create", "--name", "meter_2_0", "--type", "firmware", "--package", pkgs.Packages[0].PackageID,
		"--group", grp.Group.GroupID, "--device", "sim-4,sim-5", "--device", "sim-6", "--retry-count", "1")
	id := task.Task.TaskID
	out, errOut, code = e.cli("task", "watch", id)
	if code != 0 || !strings.Contains(out, "ended SUCCESS: success 7, fail 0") {
		t.Fatalf("task watch: exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
	out, _, code = e.cli("task", "devices", id, "--status", "success")
	if code != 0 || strings.Count(out, "SUCCESS") != 7 || strings.Count(out, "Upgrade succeeded") != 7 {
		t.Fatalf("task devices: %d\n%s", code, out)
	}
	var devs struct {
		Devices []struct{ DeviceID, Status, StatusDesc string }
	}
	e.cliJSON(&devs, "task", "devices", id)
	for _, d := range devs.Devices {
		if d.Status != "SUBTASK_STATUS_SUCCESS" || d.StatusDesc != "Upgrade succeeded" {
			t.Errorf("task devices --json: %+v, want SUCCESS with statusDesc \"Upgrade succeeded\"", d)
		}
	}
	// A finished task's devices have left their cells.
	var cells struct{ Cells []struct{ CellID string } }
	e.cliJSON(&cells, "task", "cells", id)
	if len(cells.Cells) != 0 {
		t.Errorf("task cells of a finished task: %+v, want none", cells)
	}
	if _, errOut, code := e.cli("task", "cells", "0123456789abcdef01234567"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("task cells of an unknown task: exit %d: %s", code, errOut)
	}
	out, _, code = e.cli("task", "list")
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "meter_2_0") {
		t.Fatalf("task list: %d\n%s", code, out)
	}
	out, _, code = e.cli("device", "timeline", "sim-6", "--task", id)
	if code != 0 || !strings.Contains(out, "finished SUCCESS") {
		t.Fatalf("device timeline: %d\n%s", code, out)
	}
	out, _, code = e.cli("device", "get", "sim-6")
	if code != 0 || !strings.Contains(out, "2.0") || !regexp.MustCompile(`(?m)^online: +true$`).MatchString(out) {
		t.Fatalf("device get: %d\n%s", code, out)
	}
	// The fleet summary: the 12 simulated devices connected before they
	// were registered, and count online in their product once they are.
	var sum struct {
		Total    struct{ Registered, Online, Offline string }
		Products []struct {
			ProductID string
			Devices   struct{ Registered, Online, Offline string }
		}
	}
	e.cliJSON(&sum, "device", "summary")
	if sum.Total.Registered != "12" || sum.Total.Online != "12" || sum.Total.Offline != "" || len(sum.Products) != 1 ||
		sum.Products[0].ProductID != pid || sum.Products[0].Devices.Online != "12" {
		t.Fatalf("device summary --json: %+v, want 12 registered and online in %s", sum, pid)
	}
	out, _, code = e.cli("device", "summary", "--product", pid)
	if code != 0 || strings.Join(strings.Fields(out), " ") != "PRODUCT REGISTERED ONLINE OFFLINE "+pid+" 12 12 0" {
		t.Fatalf("device summary --product: %d\n%s", code, out)
	}

	// Errors: the server's message, in the user's words, and a non-zero exit.
	_, errOut, code = e.cli("task", "stop", id)
	if code != 1 || errOut != fmt.Sprintf("otafleet: failed_precondition: task %q has already finished (SUCCESS); only a waiting or processing task can be stopped\n", id) {
		t.Fatalf("task stop of a finished task: exit %d, %s", code, errOut)
	}
	_, errOut, code = e.cli("device", "create", "--product", pid, "sim-3")
	if code != 1 || errOut != "otafleet: already_exists: device \"sim-3\"\n" {
		t.Fatalf("device create of an existing device: exit %d, %s", code, errOut)
	}

	// A task's devices in natural order; stopping a stopped task says so.
	e.cliJSON(&task, "task", "create", "--name", "order", "--type", "firmware", "--package", pkgs.Packages[0].PackageID,
		"--device", "sim-10,sim-9,sim-2,sim-11", "--schedule", "1h")
	out, errOut, code = e.cli("task", "devices", task.Task.TaskID)
	if i2, i9, i10, i11 := strings.Index(out, "sim-2 "), strings.Index(out, "sim-9 "), strings.Index(out, "sim-10 "), strings.Index(out, "sim-11 "); code != 0 || i2 < 0 || !(i2 < i9 && i9 < i10 && i10 < i11) {
		t.Fatalf("task devices, not in natural order: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code = e.cli("task", "stop", task.Task.TaskID); code != 0 {
		t.Fatalf("task stop: exit %d, %s", code, errOut)
	}
	_, errOut, code = e.cli("task", "stop", task.Task.TaskID)
	if code != 1 || errOut != fmt.Sprintf("otafleet: failed_precondition: task %q is already stopped\n", task.Task.TaskID) {
		t.Fatalf("task stop of a stopped task: exit %d, %s", code, errOut)
	}
	_, errOut, code = e.cli("task", "get", "nope")
	if code != 1 || !strings.Contains(errOut, `not_found: task_id: task "nope" not found`) {
		t.Fatalf("task get nope: exit %d, %s", code, errOut)
	}
	_, errOut, code = e.cli("product", "list", "--token", "wrong")
	if code != 1 || !strings.Contains(errOut, "unauthenticated") {
		t.Fatalf("wrong token: exit %d, %s", code, errOut)
	}
	_, errOut, code = e.cli("task", "create", "--name", "x", "--type", "bogus", "--package", "p", "--device", "d")
	if code != 2 || !strings.Contains(errOut, "--type") {
		t.Fatalf("bad --type: exit %d, %s", code, errOut)
	}

	// The LwM2M security mode of a product.
	e.cliJSON(&prod, "product", "create", "--name", "NB", "--protocol", "lwm2m", "--lwm2m-security", "psk")
	out, errOut, code = e.cli("product", "get", prod.Product.ProductID)
	if code != 0 || !strings.Contains(out, "LWM2M-SECURITY") || !strings.Contains(out, " psk ") {
		t.Fatalf("product get of a PSK product: exit %d\n%s%s", code, out, errOut)
	}
	_, errOut, code = e.cli("device", "create", "--product", prod.Product.ProductID, "--prefix", "nb-", "--count", "1")
	if code != 1 || !strings.Contains(errOut, "invalid_argument") {
		t.Fatalf("a device without a PSK in a PSK product: exit %d, %s", code, errOut)
	}
	_, errOut, code = e.cli("product", "create", "--name", "x", "--protocol", "lwm2m", "--lwm2m-security", "tls")
	if code != 2 || !strings.Contains(errOut, "--lwm2m-security") {
		t.Fatalf("bad --lwm2m-security: exit %d, %s", code, errOut)
	}
}

// TestEndToEndMQTT: otafleet serve with its embedded broker and HTTPS
// download server, devices that speak IoTDA MQTT over loopback (simulated
// with paho), driven through the API: they download, verify and install
// the package, and the timeline shows the bytes served.
func TestEndToEndMQTT(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, "--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--coap-addr", "127.0.0.1:0", "--coaps-addr", "127.0.0.1:0",
		"--download-addr", "127.0.0.1:0", "--log-format", "json")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv.await(ctx, "serving", msg("serving"))
	go func() {
		for range srv.lines {
		}
	}()
	var addrs map[string]string
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil || json.Unmarshal(b, &addrs) != nil {
		t.Fatalf("addrs.json: %s %v", b, err)
	}
	tok, _ := os.ReadFile(filepath.Join(dir, "api-token"))
	hc := h2cClient(strings.TrimSpace(string(tok)))
	api := "http://" + addrs["api"]
	products := otafleetv1connect.NewProductServiceClient(hc, api)
	devices := otafleetv1connect.NewDeviceServiceClient(hc, api)
	packages := otafleetv1connect.NewPackageServiceClient(hc, api)
	tasks := otafleetv1connect.NewTaskServiceClient(hc, api)

	prod, err := products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "Meter", Protocol: v1.Protocol_PROTOCOL_MQTT}))
	if err != nil {
		t.Fatal(err)
	}
	pid := prod.Msg.GetProduct().GetProductId()
	const n = 10
	var news []*v1.NewDevice
	for i := range n {
		secret := fmt.Sprintf("secret-%d", i)
		news = append(news, &v1.NewDevice{DeviceId: fmt.Sprintf("m-%d", i), Secret: &secret})
	}
	if _, err := devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: news})); err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("firmware-2.0 "), 20000) // 260 kB
	pkg, err := packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0", SourceVersions: []string{"1.0"},
		FileName: "meter-2.0.bin", Content: content,
	}))
	if err != nil {
		t.Fatal(err)
	}

	// The devices trust the server's self-signed certificate.
	pem, err := os.ReadFile(filepath.Join(dir, "download-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("download-cert.pem holds no certificate")
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	sims := make([]*mqttsim.Device, n)
	for i := range n {
		d, err := mqttsim.Start(ctx, mqttsim.Config{Broker: "tcp://" + addrs["mqtt"], DeviceID: news[i].GetDeviceId(),
			Secret: news[i].GetSecret(), FwVersion: "1.0", HTTPClient: client})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Stop()
		sims[i] = d
	}
	var ids []string
	for _, d := range news {
		ids = append(ids, d.GetDeviceId())
	}
	task, err := tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "meter_2_0", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: pkg.Msg.GetPackage().GetPackageId(), DeviceIds: ids,
	}))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := tasks.WatchTask(ctx, connect.NewRequest(&v1.WatchTaskRequest{TaskId: task.Msg.GetTask().GetTaskId()}))
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
	if last.GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS || last.GetProgress().GetSuccess() != n {
		t.Fatalf("task ended %v", last)
	}
	for i, d := range sims {
		if fw, _ := d.Versions(); fw != "2.0" || d.Stats().BytesDownloaded != int64(len(content)) {
			t.Fatalf("device %d: fw %s, %+v", i, fw, d.Stats())
		}
	}
	tl, err := devices.GetDeviceTimeline(ctx, connect.NewRequest(&v1.GetDeviceTimelineRequest{DeviceId: "m-3", PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	served := false
	for _, e := range tl.Msg.GetEntries() {
		if strings.Contains(e.GetDetail(), fmt.Sprintf("of %d served (100%%)", len(content))) {
			served = true
		}
	}
	if !served {
		t.Fatalf("the timeline of m-3 shows no served bytes: %v", tl.Msg.GetEntries())
	}
	// The URL and access token the device was given: the token masked, or
	// whole with reveal_tokens.
	url := "download URL https://" + addrs["download"] + "/packages/" + pkg.Msg.GetPackage().GetPackageId() + " with access token "
	for _, reveal := range []bool{false, true} {
		tl, err := devices.GetDeviceTimeline(ctx, connect.NewRequest(&v1.GetDeviceTimelineRequest{DeviceId: "m-3", PageSize: 1000, RevealTokens: reveal}))
		if err != nil {
			t.Fatal(err)
		}
		var offers []string
		for _, e := range tl.Msg.GetEntries() {
			if strings.HasPrefix(e.GetDetail(), "download URL") {
				offers = append(offers, e.GetDetail())
			}
		}
		if len(offers) != 1 || !strings.HasPrefix(offers[0], url) || (strings.TrimPrefix(offers[0], url) == "***") == reveal {
			t.Fatalf("timeline of m-3 (reveal_tokens %v): download offers %q, want one %s%s", reveal, offers, url, map[bool]string{false: "***", true: "<token>"}[reveal])
		}
	}
}

// TestEndToEndLwM2M: otafleet serve with its LwM2M server; LwM2M devices
// (simulated, each on its own UDP socket, one over DTLS with its PSK)
// register, and a firmware task created through the API upgrades them.
func TestEndToEndLwM2M(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, "--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "", "--coap-addr", "127.0.0.1:0",
		"--coaps-addr", "127.0.0.1:0", "--download-addr", "", "--log-format", "json")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv.await(ctx, "serving", msg("serving"))
	go func() {
		for range srv.lines {
		}
	}()
	var addrs map[string]string
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil || json.Unmarshal(b, &addrs) != nil || addrs["coap"] == "" || addrs["coaps"] == "" {
		t.Fatalf("addrs.json: %s %v", b, err)
	}
	tok, _ := os.ReadFile(filepath.Join(dir, "api-token"))
	hc := h2cClient(strings.TrimSpace(string(tok)))
	api := "http://" + addrs["api"]
	products := otafleetv1connect.NewProductServiceClient(hc, api)
	devices := otafleetv1connect.NewDeviceServiceClient(hc, api)
	packages := otafleetv1connect.NewPackageServiceClient(hc, api)
	tasks := otafleetv1connect.NewTaskServiceClient(hc, api)
	prod, err := products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "Meter", Protocol: v1.Protocol_PROTOCOL_LWM2M}))
	if err != nil {
		t.Fatal(err)
	}
	pid := prod.Msg.GetProduct().GetProductId()
	const n = 6
	news := []*v1.NewDevice{{DeviceId: "nb-dtls", Psk: []byte("nb-dtls-psk-0001")}}
	for i := 1; i < n; i++ {
		news = append(news, &v1.NewDevice{DeviceId: fmt.Sprintf("nb-%d", i)})
	}
	if _, err := devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: news})); err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("nb-iot firmware "), 1000) // 16 kB: 16 blocks
	pkg, err := packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0", SourceVersions: []string{"1.0"},
		FileName: "nb-2.0.bin", Content: content,
	}))
	if err != nil {
		t.Fatal(err)
	}
	rsrp, sinr := int32(-95), int32(10)
	var ids []string
	sims := make([]*lwm2msim.Device, n)
	for i, d := range news {
		cfg := lwm2msim.Config{Server: addrs["coap"], Endpoint: d.GetDeviceId(), FwVersion: "1.0", RSRP: &rsrp, SINR: &sinr,
			CellID: 77, NewVersion: func(string) string { return "2.0" }}
		if d.Psk != nil {
			cfg.Server, cfg.PSK = addrs["coaps"], d.GetPsk()
		}
		sim, err := lwm2msim.Start(ctx, cfg)
		if err != nil {
			t.Fatalf("%s: %v", d.GetDeviceId(), err)
		}
		defer sim.Stop()
		sims[i] = sim
		ids = append(ids, d.GetDeviceId())
	}
	task, err := tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "nb_2_0", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: pkg.Msg.GetPackage().GetPackageId(), DeviceIds: ids,
	}))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := tasks.WatchTask(ctx, connect.NewRequest(&v1.WatchTaskRequest{TaskId: task.Msg.GetTask().GetTaskId()}))
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
	if last.GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS || last.GetProgress().GetSuccess() != n {
		t.Fatalf("task ended %v", last)
	}
	for i, d := range sims {
		if fw, _ := d.Versions(); fw != "2.0" || d.Stats().BlocksFetched != 16 {
			t.Fatalf("device %d: fw %s, %+v", i, fw, d.Stats())
		}
	}
	dev, err := devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: "nb-dtls"}))
	if err != nil || dev.Msg.GetDevice().GetFwVersion() != "2.0" || dev.Msg.GetDevice().GetCellId() != "77" || dev.Msg.GetDevice().GetRsrp() != -95 {
		t.Fatalf("GetDevice nb-dtls: %v %v", dev, err)
	}

	// The timeline shows the package URI each device was given, its token
	// masked; --reveal-tokens (reveal_tokens) shows it whole.
	e := &e2e{t: t, dir: dir}
	for _, c := range []struct{ id, prefix string }{
		{"nb-1", "download URI coap://" + addrs["coap"] + "/"},
		{"nb-dtls", "download URI coaps://" + addrs["coaps"] + "/"},
	} {
		masked, errOut, code := e.cli("device", "timeline", c.id)
		revealed, errOut2, code2 := e.cli("device", "timeline", c.id, "--reveal-tokens")
		if code != 0 || code2 != 0 {
			t.Fatalf("device timeline %s: exit %d %s / %d %s", c.id, code, errOut, code2, errOut2)
		}
		m, r := lineWith(masked, c.prefix), lineWith(revealed, c.prefix)
		if m == "" || r == "" || !strings.Contains(m, "***") || strings.Contains(r, "***") || len(r) <= len(m) {
			t.Fatalf("device timeline %s: the URI masked %q, revealed %q; want %s...", c.id, m, r, c.prefix)
		}
		// Only the token differs: what the masked line shows around "***"
		// frames the revealed token.
		before, after, _ := strings.Cut(m, "***")
		if !strings.HasPrefix(r, before) || !strings.HasSuffix(r, after) || strings.Contains(masked, strings.TrimSuffix(strings.TrimPrefix(r, before), after)) {
			t.Fatalf("device timeline %s: masked %q and revealed %q differ in more than the token", c.id, m, r)
		}
	}
}

// lineWith returns the first line of out that contains s, from s on; "" if none.
func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, s); i >= 0 {
			return strings.TrimSpace(l[i:])
		}
	}
	return ""
}

// TestEndToEndConsoleSession: the one-time login URL serve logs sets the
// console's session cookie once and sends the browser to /ui/; the API then
// accepts the cookie with the CSRF token (read from /ui/session) and
// refuses it without; the bearer token works as before.
func TestEndToEndConsoleSession(t *testing.T) {
	e := startE2E(t, 0)
	want := e.api + "/ui/login?once="
	if !strings.HasPrefix(e.loginURL, want) || len(e.loginURL) != len(want)+43 {
		t.Fatalf("login URL %q, want %s<43 characters>", e.loginURL, want)
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := noRedirect.Get(e.loginURL)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	var session *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == "otafleet_session" {
			session = c
		}
	}
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/ui/" || session == nil || !session.HttpOnly {
		t.Fatalf("login URL: %d to %q, cookies %v", res.StatusCode, res.Header.Get("Location"), res.Cookies())
	}
	if res, err := noRedirect.Get(e.loginURL); err != nil || res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("login URL used twice: %v %v, want 401", res, err)
	}

	call := func(path, csrf string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, e.api+path, strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		req.AddCookie(session)
		if csrf != "" {
			req.Header.Set("X-CSRF-Token", csrf)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := call("/otafleet.v1.TaskService/ListTasks", ""); code != http.StatusForbidden || !strings.Contains(body, "X-CSRF-Token") {
		t.Fatalf("cookie without CSRF header: %d %s, want 403", code, body)
	}
	req, _ := http.NewRequest(http.MethodGet, e.api+"/ui/session", nil)
	req.AddCookie(session)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sess struct{ CSRFToken string }
	err = json.NewDecoder(res.Body).Decode(&sess)
	res.Body.Close()
	if err != nil || sess.CSRFToken == "" {
		t.Fatalf("/ui/session: %d %v", res.StatusCode, err)
	}
	if code, body := call("/otafleet.v1.TaskService/ListTasks", sess.CSRFToken); code != http.StatusOK {
		t.Fatalf("cookie with CSRF header: %d %s", code, body)
	}
	if _, err := e.tasks.ListTasks(context.Background(), connect.NewRequest(&v1.ListTasksRequest{})); err != nil {
		t.Fatalf("bearer token: %v", err)
	}
}
