package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
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
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
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

// go_ opens a console route (#/...) and waits for its heading.
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
	srv.await(ctx, "serving", msg("serving"))
	go func() {
		for m := range srv.lines {
			s.mu.Lock()
			s.logLines = append(s.logLines, m)
			s.mu.Unlock()
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

// TestConsoleServedWithoutSession: the console's page loads without a
// session and asks for the token, small; the API refuses the calls of a
// browser that has no session.
func TestConsoleServedWithoutSession(t *testing.T) {
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

	// A call from the page without a session is refused, and so is one
	// from outside the browser without the token.
	status := eval[int](b, `fetch("/otafleet.v1.ProductService/ListProducts", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"}).then(r => r.status)`)
	if status != http.StatusUnauthorized {
		t.Fatalf("ListProducts from the page without a session: HTTP %d, want 401", status)
	}
	res, err := http.Post(s.api+"/otafleet.v1.ProductService/ListProducts", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("ListProducts without a token: HTTP %d, want 401", res.StatusCode)
	}
}
