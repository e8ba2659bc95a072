package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/otafleet/otafleet/internal/goldentest"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// The console's browser tests drive Debian's Chromium (headless, through
// the DevTools protocol) against a real `otafleet serve` process and
// simulated devices (`otafleet sim` processes) over real sockets. Nothing
// downloads a browser: the test fails when chromium is not installed
// (.ci/run installs it), unless OTAFLEET_SKIP_CHROMIUM=1.
//
// Screenshots of the main pages go to the test's artifact directory (kept
// with `go test -artifacts -outputdir DIR`); with -rewrite the test also
// rewrites docs/console.png, the README's picture.

// chromiumPath finds the system Chromium.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("OTAFLEET_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("OTAFLEET_SKIP_CHROMIUM") == "1" {
		t.Skip("chromium is not installed and OTAFLEET_SKIP_CHROMIUM=1")
	}
	t.Fatal("chromium is not installed: apt-get install chromium (.ci/run does), set OTAFLEET_CHROMIUM to a Chromium binary, or set OTAFLEET_SKIP_CHROMIUM=1")
	return ""
}

// browser is one headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
	// received sums the encoded (on the wire) size of every response.
	received atomic.Int64
	mu       sync.Mutex
	errs     []string // uncaught exceptions and console errors of the page
}

func (b *browser) addErr(s string) {
	b.mu.Lock()
	b.errs = append(b.errs, s)
	b.mu.Unlock()
}

// checkScriptErrors fails the test if the page threw an uncaught exception
// (a rejected promise nobody handled included) or logged an error.
func (b *browser) checkScriptErrors() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errs) > 0 {
		b.t.Fatalf("the page's script failed:\n%s", strings.Join(b.errs, "\n"))
	}
}

func describeException(d *runtime.ExceptionDetails) string {
	if d.Exception != nil && d.Exception.Description != "" {
		return d.Exception.Description
	}
	return fmt.Sprintf("at %s:%d", d.URL, d.LineNumber)
}

func consoleArgs(args []*runtime.RemoteObject) []string {
	var out []string
	for _, a := range args {
		if a.Description != "" {
			out = append(out, a.Description)
		} else {
			out = append(out, string(a.Value))
		}
	}
	return out
}

func newBrowser(t *testing.T, ctx context.Context) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-pings", true),
	)
	// Without its sandbox: Chromium refuses to run as root with it, and CI
	// containers often lack the user namespaces it needs otherwise. The
	// browser opens only the test's own server on loopback.
	opts = append(opts, chromedp.NoSandbox)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	b := &browser{t: t, ctx: bctx}
	if err := chromedp.Do(bctx); err != nil { // start the browser
		t.Fatalf("starting %s: %v", chromiumPath(t), err)
	}
	if err := chromedp.Listen(bctx, func(ev any) {
		switch e := ev.(type) {
		case *network.EventLoadingFinished:
			b.received.Add(int64(e.EncodedDataLength))
		case *runtime.EventExceptionThrown:
			b.addErr("uncaught: " + e.ExceptionDetails.Text + " " + describeException(e.ExceptionDetails))
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				b.addErr(fmt.Sprintf("console.error: %v", consoleArgs(e.Args)))
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	return b
}

// do runs steps; on failure it saves a screenshot and fails the test.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.fail(what, err)
	}
}

func (b *browser) fail(what string, err error) {
	b.t.Helper()
	b.shot("failure")
	text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
	b.t.Fatalf("%s: %v\npage: %s", what, err, text)
}

// waitJS waits until the JavaScript expression is truthy.
func (b *browser) waitJS(what, expr string, timeout time.Duration) {
	b.t.Helper()
	_, err := chromedp.Run(b.ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		b.fail("waiting for "+what, err)
	}
}

// eval evaluates a JavaScript expression into a T (promises are awaited).
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.fail("evaluating "+expr, err)
	}
	return v
}

// loseAnswer intercepts the answers to requests matching urlPattern and
// drops the nth (1-based) as a reset connection, after the server handled
// the request; it returns the count of answers seen.
func (b *browser) loseAnswer(urlPattern string, nth int64) *atomic.Int64 {
	b.t.Helper()
	var n atomic.Int64
	if err := chromedp.Listen(b.ctx, func(ev any) {
		e, ok := ev.(*fetch.EventRequestPaused)
		if !ok {
			return
		}
		lose := n.Add(1) == nth
		go func() { // a listener must not block: answer from another goroutine
			_ = chromedp.Do(b.ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
				if lose {
					_, err := cdp.Call(ctx, tg, fetch.FailRequest, fetch.FailRequestParams{RequestID: e.RequestID, ErrorReason: network.ErrorReasonConnectionReset})
					return err
				}
				_, err := cdp.Call(ctx, tg, fetch.ContinueResponse, fetch.ContinueResponseParams{RequestID: e.RequestID})
				return err
			}))
		}()
	}); err != nil {
		b.t.Fatal(err)
	}
	b.do("intercepting "+urlPattern, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: urlPattern, RequestStage: fetch.RequestStageResponse}}})
		return err
	}))
	return &n
}

// open opens a console route (#/...) and waits for its heading.
func (b *browser) open(base, route, heading string) {
	b.t.Helper()
	b.do("opening "+route, chromedp.Navigate(base+"/ui/#"+route))
	b.waitJS("the page "+heading, fmt.Sprintf(`(document.querySelector("main h1")?.textContent ?? "").includes(%q)`, heading), 15*time.Second)
}

// shot saves a full-page PNG screenshot in the artifact directory.
func (b *browser) shot(name string) []byte {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return nil
	}
	p := filepath.Join(b.t.ArtifactDir(), name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	return png
}

// consoleServer is a running `otafleet serve` for the browser tests.
type consoleServer struct {
	dir, api, token string
	mu              sync.Mutex
	logLines        []map[string]any
}

func startConsoleServer(t *testing.T, ctx context.Context) *consoleServer {
	t.Helper()
	dir := t.TempDir()
	srv := startServer(t, "--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--coap-addr", "127.0.0.1:0",
		"--coaps-addr", "127.0.0.1:0", "--download-addr", "127.0.0.1:0", "--log-format", "json")
	s := &consoleServer{dir: dir}
	keep := func(m map[string]any) {
		s.mu.Lock()
		s.logLines = append(s.logLines, m)
		s.mu.Unlock()
	}
	srv.await(ctx, "serving", func(m map[string]any) bool { keep(m); return msg("serving")(m) })
	go func() {
		for m := range srv.lines {
			keep(m)
		}
	}()
	var addrs map[string]string
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil || json.Unmarshal(b, &addrs) != nil || addrs["api"] == "" {
		t.Fatalf("addrs.json: %s %v", b, err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	s.api, s.token = "http://"+addrs["api"], strings.TrimSpace(string(tok))
	return s
}

// startSimProcess runs `otafleet sim` with args against s and waits until
// its devices are connected.
func startSimProcess(t *testing.T, ctx context.Context, s *consoleServer, args ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"sim", "--data-dir", s.dir, "--register", "--log-level", "warn"}, args...)...)
	cmd.Env = append(os.Environ(), "OTAFLEET_TEST_MAIN=1", envToken+"=", envAPI+"=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready ") {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("sim %v exited before ready:\n%s", args, stderr.String())
		}
	case <-ctx.Done():
		t.Fatalf("sim %v not ready:\n%s", args, stderr.String())
	}
}

// TestConsoleSession: the console's page loads without a session, small,
// and asks for the token; the API refuses the page's calls until it logs in
// (a wrong token is refused), the one-time login URL logs in once and leaves
// the address bar, a call with the session cookie but without the CSRF
// header is refused, and logging out ends the session.
func TestConsoleSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := startConsoleServer(t, ctx)
	b := newBrowser(t, ctx)

	b.do("opening the console", chromedp.Navigate(s.api+"/ui/"))
	b.waitJS("the login page", `location.hash.startsWith("#/login") && document.querySelector("input#token") !== null`, 15*time.Second)
	first := b.received.Load()
	t.Logf("first page (login): %d bytes transferred", first)
	if first <= 0 || first > 200*1024 {
		t.Fatalf("the first page took %d bytes on the wire, want 1 .. 200 KiB", first)
	}
	b.shot("login")

	// Without a session the API refuses the page, and anyone without the token.
	listProducts := func(csrf bool) int {
		h := `{"Content-Type": "application/json"}`
		if csrf {
			h = `{"Content-Type": "application/json", "X-CSRF-Token": sessionStorage.getItem("otafleet.csrf") ?? ""}`
		}
		return eval[int](b, `fetch("/otafleet.v1.ProductService/ListProducts", {method: "POST", headers: `+h+`, body: "{}"}).then(r => r.status)`)
	}
	if st := listProducts(true); st != http.StatusUnauthorized {
		t.Fatalf("ListProducts from the page without a session: HTTP %d, want 401", st)
	}
	res, err := http.Post(s.api+"/otafleet.v1.ProductService/ListProducts", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("ListProducts without a token: HTTP %d, want 401", res.StatusCode)
	}

	// A wrong token is refused on the page.
	b.do("a wrong token", chromedp.SendKeys(chromedp.ID("token"), "not-the-token"), chromedp.Click(chromedp.CSS(`form button[type="submit"]`)))
	b.waitJS("the refusal", `document.querySelector("main .error:not([hidden])")?.textContent.includes("not valid")`, 10*time.Second)

	// The one-time URL logs in and leaves the address bar.
	once := s.loginURL(t)
	b.do("opening the one-time login URL", chromedp.Navigate(once))
	b.waitJS("the fleet page", `location.hash === "#/" && document.querySelector("main h1")?.textContent === "Fleet"`, 15*time.Second)
	t.Logf("the fleet page after login: %d bytes more", b.received.Load()-first)
	if href := eval[string](b, `location.href`); strings.Contains(href, "once") {
		t.Fatalf("the address bar still shows the one-time code: %s", href)
	}
	if st := listProducts(true); st != http.StatusOK {
		t.Fatalf("ListProducts with the session and its CSRF token: HTTP %d, want 200", st)
	}
	if st := listProducts(false); st != http.StatusForbidden {
		t.Fatalf("ListProducts with the session cookie but no CSRF header: HTTP %d, want 403", st)
	}
	res, err = http.Get(once)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the one-time login URL used again: HTTP %d, want 401", res.StatusCode)
	}

	// Logging out ends the session: the page asks for the token again.
	b.do("logging out", chromedp.Click(chromedp.ID("logout")))
	b.waitJS("the login page", `location.hash.startsWith("#/login") && document.querySelector("input#token") !== null`, 10*time.Second)
	if st := listProducts(false); st != http.StatusUnauthorized {
		t.Fatalf("ListProducts after logging out: HTTP %d, want 401", st)
	}
	b.checkScriptErrors()
}

// TestConsoleInBrowser is the console's acceptance test: log in, upload a
// package, create a task and watch it reach SUCCESS live, open a failed
// device's timeline, retry a failed task, see a cell at its budget with
// devices queued and stop that task; the main pages are photographed.
func TestConsoleInBrowser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s := startConsoleServer(t, ctx)
	hc := h2cClient(s.token)
	products := otafleetv1connect.NewProductServiceClient(hc, s.api)
	packages := otafleetv1connect.NewPackageServiceClient(hc, s.api)
	tasks := otafleetv1connect.NewTaskServiceClient(hc, s.api)
	mq, err := products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "Meter", Protocol: v1.Protocol_PROTOCOL_MQTT}))
	if err != nil {
		t.Fatal(err)
	}
	lw, err := products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "Tracker", Protocol: v1.Protocol_PROTOCOL_LWM2M}))
	if err != nil {
		t.Fatal(err)
	}
	mqID, lwID := mq.Msg.GetProduct().GetProductId(), lw.Msg.GetProduct().GetProductId()
	// ok- devices upgrade (slowly enough to be seen running), bad- devices
	// fail, and q- devices (poor coverage, one cell: one at a time) queue,
	// and hold back the g- devices of their cell.
	startSimProcess(t, ctx, s, "--protocol", "mqtt", "--product", mqID, "--id-prefix", "ok-", "--devices", "3", "--think-time", "400ms")
	startSimProcess(t, ctx, s, "--protocol", "mqtt", "--product", mqID, "--id-prefix", "bad-", "--devices", "2", "--fail-rate", "1")
	startSimProcess(t, ctx, s, "--protocol", "lwm2m", "--product", lwID, "--id-prefix", "q-", "--devices", "3", "--cells", "1", "--coverage", "poor", "--think-time", "3s")
	// g- devices (good coverage) share cell 1 with the q- devices and have
	// cells 2 and 3 to themselves.
	startSimProcess(t, ctx, s, "--protocol", "lwm2m", "--product", lwID, "--id-prefix", "g-", "--devices", "6", "--cells", "3", "--coverage", "good", "--think-time", "3s")

	// Two meters registered that never connect: offline.
	deviceSvc := otafleetv1connect.NewDeviceServiceClient(hc, s.api)
	secret := "idle-secret-1"
	if _, err := deviceSvc.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: mqID,
		Devices: []*v1.NewDevice{{DeviceId: "idle-0", Secret: &secret}, {DeviceId: "idle-1", Secret: &secret}}})); err != nil {
		t.Fatal(err)
	}

	b := newBrowser(t, ctx)
	consoleLogin(t, b, s)
	b.open(s.api, "/", "Fleet")
	// The fleet page's counts are the simulated fleet's: 5 meters (2 of
	// them idle, offline) and 9 trackers, all connected or registered by
	// the sim processes, which were ready before the page was opened.
	b.waitJS("the device counts", `[...document.querySelectorAll("#device-stats li")].map(l => l.textContent).join(", ") === "16 registered, 14 online, 2 offline"`, 10*time.Second)
	perProduct := eval[map[string]string](b, `Object.fromEntries([...document.querySelectorAll("main table tbody tr")].filter(r => r.querySelector("code")).map(r => [r.querySelector("code").textContent, r.lastElementChild.textContent]))`)
	if perProduct[mqID] != "5 of 7" || perProduct[lwID] != "9 of 9" {
		t.Fatalf("devices online per product %v, want %s: 5 of 7, %s: 9 of 9", perProduct, mqID, lwID)
	}
	// One GetFleetSummary call, no per-device ones.
	devCalls := eval[[]string](b, `performance.getEntriesByType("resource").map(e => e.name).filter(n => n.includes("/otafleet.v1.DeviceService/")).map(n => n.slice(n.lastIndexOf("/") + 1))`)
	if !slices.Contains(devCalls, "GetFleetSummary") || slices.Contains(devCalls, "GetDevice") || slices.Contains(devCalls, "ListDevices") {
		t.Fatalf("the fleet page called DeviceService %v, want GetFleetSummary and no per-device call", devCalls)
	}
	b.shot("overview")

	// Upload a package of three chunks through the form.
	file := filepath.Join(t.TempDir(), "meter-2.0.bin")
	if err := os.WriteFile(file, bytes.Repeat([]byte("firmware 2.0 "), (2<<20+300<<10)/13), 0o644); err != nil {
		t.Fatal(err)
	}
	b.open(s.api, "/upload", "Upload a package")
	// The answer to the second chunk is lost on the way back (the server
	// has the chunk): the page asks where the upload stands and goes on.
	calls := b.loseAnswer("*/otafleet.v1.PackageService/UploadPackageChunk", 2)
	b.do("filling the upload form",
		chromedp.SetValue(chromedp.ID("pkg-product"), mqID),
		chromedp.SendKeys(chromedp.ID("pkg-version"), "2.0"),
		chromedp.SendKeys(chromedp.ID("pkg-sources"), "1.0"),
		chromedp.SetUploadFiles(chromedp.ID("pkg-file"), []string{file}),
		chromedp.Click(chromedp.CSS(`form button[type="submit"]`)),
	)
	b.waitJS("the upload's end", `document.querySelector("#upload-status")?.dataset.packageId`, 20*time.Second)
	pkgID := eval[string](b, `document.querySelector("#upload-status").dataset.packageId`)
	b.do("ending the interception", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, fetch.Disable, cdp.Empty{})
		return err
	}))
	if n := calls.Load(); n != 4 { // three chunks, and the question after the lost answer
		t.Fatalf("the upload made %d UploadPackageChunk calls, want 4", n)
	}
	if got := eval[float64](b, `document.querySelector("#upload-progress").value`); got != float64(len(bytes.Repeat([]byte("firmware 2.0 "), (2<<20+300<<10)/13))) {
		t.Fatalf("the progress bar ends at %v", got)
	}
	b.shot("upload")

	// Create a task through the form; its page shows it run and succeed
	// without a reload (the WatchTask stream).
	b.open(s.api, "/tasks/new", "New task")
	b.do("filling the task form",
		chromedp.SendKeys(chromedp.ID("task-name"), "meter_2_0"),
		chromedp.SetValue(chromedp.ID("task-package"), pkgID),
		chromedp.SendKeys(chromedp.ID("task-devices"), "ok-0 ok-1, ok-2"),
		chromedp.Click(chromedp.CSS(`form button[type="submit"]`)),
	)
	b.waitJS("the task page", `location.hash.startsWith("#/task/") && document.querySelector("#task-status") !== null`, 10*time.Second)
	eval[chromedp.Void](b, `window.seen = []; new MutationObserver(() => window.seen.push(document.querySelector("#task-status").dataset.status)).observe(document.querySelector("#task-status"), {attributes: true, childList: true, characterData: true, subtree: true}), undefined`)
	b.waitJS("SUCCESS", `document.querySelector("#task-status").dataset.status === "success" && document.querySelector("#live").dataset.live === "false"`, 30*time.Second)
	if seen := eval[[]string](b, `window.seen`); len(seen) == 0 {
		t.Fatal("the task page did not change while the task ran: no live update")
	}
	b.waitJS("the devices' table", `[...document.querySelectorAll("#devices tbody tr")].filter(r => r.textContent.includes("success")).length === 3`, 10*time.Second)
	if got := eval[string](b, `document.querySelector('#counts dd[data-count="success"]').textContent`); got != "3" {
		t.Fatalf("success count %q, want 3", got)
	}
	b.shot("task-success")

	// A task to the failing devices: its failures by reason link to a
	// failed device's timeline. Retrying it runs the devices again.
	bad := createTask(t, ctx, tasks, "meter_retry", pkgID, "bad-0", "bad-1")
	b.open(s.api, "/task/"+bad, "meter_retry")
	b.waitJS("FAIL", `document.querySelector("#task-status").dataset.status === "fail"`, 30*time.Second)
	b.waitJS("the failures by reason", `document.querySelectorAll("#failures tbody tr a").length > 0`, 10*time.Second)
	b.shot("task-fail")
	b.do("opening a failed device", chromedp.Click(chromedp.CSS(`#failures tbody tr a`)))
	b.waitJS("the device's timeline", `location.hash.startsWith("#/device/bad-") && document.querySelectorAll(".timeline tbody tr").length > 1`, 10*time.Second)
	if tl := eval[string](b, `document.querySelector(".timeline").textContent`); !strings.Contains(tl, bad) {
		t.Fatalf("the failed device's timeline does not name the task %s:\n%s", bad, tl)
	}
	b.shot("device")
	b.open(s.api, "/task/"+bad, "meter_retry")
	b.waitJS("the retry button", `!document.querySelector("#retry").disabled`, 10*time.Second)
	b.do("retrying", chromedp.Click(chromedp.ID("retry")))
	b.waitJS("the retry", `document.querySelector("main [role=status]").textContent === "Retry requested"`, 10*time.Second)
	b.waitJS("FAIL again", `document.querySelector("#task-status").dataset.status === "fail" && document.querySelector("#live").dataset.live === "false"`, 30*time.Second)
	devs, err := tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: bad}))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs.Msg.GetDevices() {
		if d.GetAttempts() < 2 {
			t.Fatalf("after the retry, %s has %d attempts", d.GetDeviceId(), d.GetAttempts())
		}
	}

	// A task over three cells, one of which takes one poor-coverage device
	// at a time: the cell view shows that one first, at its budget with
	// devices queued, while the others have room. Stop the task.
	lwPkg, err := packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{ProductId: lwID, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE,
		Version: "2.0", FileName: "tracker-2.0.bin", Content: bytes.Repeat([]byte("tracker "), 4096)}))
	if err != nil {
		t.Fatal(err)
	}
	queued := createTask(t, ctx, tasks, "tracker_2_0", lwPkg.Msg.GetPackage().GetPackageId(), "q-0", "q-1", "q-2", "g-0", "g-1", "g-2", "g-3", "g-4", "g-5")
	b.open(s.api, "/task/"+queued, "tracker_2_0")
	b.waitJS("a cell at its budget with devices queued", `[...document.querySelectorAll("#cells tr.bottleneck")].some(r => r.textContent.includes("at budget") && /^[1-9]/.test(r.cells[3].textContent)) && document.querySelectorAll("#cells tbody tr").length === 3`, 30*time.Second)
	png := b.shot("task-cells")
	if goldentest.Rewriting() {
		if err := os.MkdirAll(filepath.Join("..", "..", "docs"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "console.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Stop it from the keyboard: Tab from the page's heading reaches the
	// Stop button, which shows where the focus is; Enter presses it.
	eval[chromedp.Void](b, `document.querySelector("main h1").focus(), undefined`)
	for i := 0; eval[string](b, `document.activeElement.id`) != "stop"; i++ {
		if i == 10 {
			b.fail("tabbing to the Stop button", fmt.Errorf("focus is on %s", eval[string](b, `document.activeElement.outerHTML.slice(0, 200)`)))
		}
		b.do("pressing Tab", chromedp.KeyEvent(kb.Tab))
	}
	if outline := eval[string](b, `getComputedStyle(document.activeElement).outlineStyle`); outline == "none" {
		t.Fatal("the focused Stop button shows no focus ring")
	}
	b.do("stopping", chromedp.KeyEvent(kb.Enter))
	b.waitJS("STOPPED", `["stopping", "stopped"].includes(document.querySelector("#task-status").dataset.status)`, 10*time.Second)
	got, err := tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: queued}))
	if err != nil {
		t.Fatal(err)
	}
	if st := got.Msg.GetTask().GetStatus(); st != v1.TaskStatus_TASK_STATUS_STOPPING && st != v1.TaskStatus_TASK_STATUS_STOPPED {
		t.Fatalf("after Stop in the console the task is %v", st)
	}

	// On a phone's width nothing runs off the side.
	b.do("a phone's screen", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	for _, p := range []struct{ route, heading, shot string }{
		{"/", "Fleet", "overview-phone"},
		{"/task/" + queued, "tracker_2_0", "task-phone"},
		{"/device/q-0", "q-0", "device-phone"},
		{"/upload", "Upload a package", "upload-phone"},
	} {
		b.open(s.api, p.route, p.heading)
		b.shot(p.shot)
		if w := eval[int](b, `document.documentElement.scrollWidth - window.innerWidth`); w > 0 {
			t.Fatalf("on a 390 px screen the page %s is %d px too wide", p.route, w)
		}
	}
	b.checkScriptErrors()
}

func createTask(t *testing.T, ctx context.Context, tasks otafleetv1connect.TaskServiceClient, name, pkg string, devices ...string) string {
	t.Helper()
	r, err := tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{Name: name, TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: pkg, DeviceIds: devices}))
	if err != nil {
		t.Fatal(err)
	}
	return r.Msg.GetTask().GetTaskId()
}

// consoleLogin logs the browser in through the login page, with the token.
func consoleLogin(t *testing.T, b *browser, s *consoleServer) {
	t.Helper()
	b.do("opening the console", chromedp.Navigate(s.api+"/ui/"))
	b.waitJS("the login page", `document.querySelector("input#token") !== null`, 15*time.Second)
	b.do("logging in", chromedp.SendKeys(chromedp.ID("token"), s.token), chromedp.Click(chromedp.CSS(`form button[type="submit"]`)))
	b.waitJS("the fleet page", `location.hash === "#/" && document.querySelector("main h1")?.textContent === "Fleet"`, 15*time.Second)
}

// loginURL is the one-time login URL serve logged.
func (s *consoleServer) loginURL(t *testing.T) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.logLines {
		if msg, _ := m["msg"].(string); strings.HasPrefix(msg, "console login") {
			if u, _ := m["url"].(string); u != "" {
				return u
			}
		}
	}
	t.Fatal("serve logged no console login URL")
	return ""
}
