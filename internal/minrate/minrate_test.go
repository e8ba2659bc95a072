package minrate_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/minrate"
)

// The tests use a real clock on loopback sockets with a tiny window: a
// transfer below 256 KiB/s over 250 ms of transfer time is cut. (Far
// more than a loaded machine delays a loopback transfer.)
var cfg = minrate.Config{Rate: 256 << 10, Window: 250 * time.Millisecond}

// serve serves minrate.Handler(cfg, h) over HTTP/1.1 and h2c on loopback.
func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(minrate.Handler(cfg, h))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// client returns an HTTP/1.1 or an h2c client.
func client(t *testing.T, h2 bool) *http.Client {
	p := new(http.Protocols)
	if h2 {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr := &http.Transport{Protocols: p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// testCtx bounds a test that fails by hanging.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wait returns the value c delivers, or fails when ctx ends first.
func wait[T any](t *testing.T, ctx context.Context, what string, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-ctx.Done():
		t.Fatalf("%s: not within the test's time", what)
		panic("unreachable")
	}
}

// stalledUpload sends the headers of a 1 MiB upload and 100 bytes of it,
// then nothing, and returns once the request is on its way.
func stalledUpload(t *testing.T, ctx context.Context, srv *httptest.Server, h2 bool) {
	t.Helper()
	if !h2 {
		u, _ := url.Parse(srv.URL)
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fmt.Fprintf(conn, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", 1<<20, strings.Repeat("x", 100))
		return
	}
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go func() { _, _ = pw.Write(make([]byte, 100)) }()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/up", pr)
	hc := client(t, true)
	go func() {
		if res, err := hc.Do(req); err == nil {
			res.Body.Close()
		}
	}()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

func TestSlowUploadIsCut(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			ctx := testCtx(t)
			read := make(chan error, 1)
			srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, err := io.Copy(io.Discard, r.Body)
				read <- err
			}))
			stalledUpload(t, ctx, srv, h2)
			if err := wait(t, ctx, "the stalled upload's cut", read); !isTimeout(err) {
				t.Fatalf("reading a stalled upload: %v, want a timeout", err)
			}
		})
	}
}

func TestFastUploadPasses(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			ctx := testCtx(t)
			srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n, err := io.Copy(io.Discard, r.Body)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				fmt.Fprint(w, n)
			}))
			const size = 8 << 20
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, io.LimitReader(zeros{}, size))
			res, err := client(t, h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK || string(b) != fmt.Sprint(size) {
				t.Fatalf("upload: %d %s", res.StatusCode, b)
			}
		})
	}
}

// zeros reads zero bytes forever.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestSlowDownloadIsCut(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			ctx := testCtx(t)
			wrote := make(chan error, 1)
			srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// Far more than the socket buffers and flow-control
				// windows hold, so a client that reads nothing stalls it.
				_, err := io.CopyBuffer(w, io.LimitReader(zeros{}, 256<<20), make([]byte, 32<<10))
				wrote <- err
			}))
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			res, err := client(t, h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			// The client reads nothing.
			if err := wait(t, ctx, "the stalled download's cut", wrote); err == nil {
				t.Fatal("a download nobody reads was written to the end")
			}
			if _, err := io.Copy(io.Discard, res.Body); err == nil {
				t.Error("the client read a cut download to its end without an error")
			}
		})
	}
}

func TestFastDownloadPasses(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			ctx := testCtx(t)
			const size = 16 << 20
			srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(w, io.LimitReader(zeros{}, size))
			}))
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			res, err := client(t, h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if n, err := io.Copy(io.Discard, res.Body); n != size || err != nil {
				t.Fatalf("read %d bytes (%v), want %d", n, err, size)
			}
		})
	}
}

// TestIdleStreamLives: a response that waits between two messages for
// longer than the window (a server stream such as WatchTask) is not cut,
// and neither is its (fully read) request. The wait is measured by another
// request's cut, which takes at least a window.
func TestIdleStreamLives(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			ctx := testCtx(t)
			next := make(chan struct{})
			cut := make(chan error, 1)
			srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/up" {
					_, err := io.Copy(io.Discard, r.Body)
					cut <- err
					return
				}
				if _, err := io.Copy(io.Discard, r.Body); err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				for i := range 3 {
					fmt.Fprintf(w, "message %d\n", i)
					http.NewResponseController(w).Flush()
					select {
					case <-next:
					case <-r.Context().Done():
						return
					}
				}
			}))
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/stream", strings.NewReader("watch"))
			res, err := client(t, h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			lines := bufio.NewReader(res.Body)
			for i := range 3 {
				line, err := lines.ReadString('\n')
				if err != nil || line != fmt.Sprintf("message %d\n", i) {
					t.Fatalf("message %d: %q %v", i, line, err)
				}
				if i == 2 {
					break
				}
				// More than a window passes before the next message.
				stalledUpload(t, ctx, srv, h2)
				if err := wait(t, ctx, "a stalled upload's cut", cut); !isTimeout(err) {
					t.Fatalf("stalled upload: %v", err)
				}
				next <- struct{}{}
			}
			next <- struct{}{}
			if rest, err := io.ReadAll(lines); err != nil || len(rest) != 0 {
				t.Fatalf("end of the stream: %q %v", rest, err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []minrate.Config{{Rate: -1, Window: time.Second}, {Rate: 1}} {
		if c.Validate() == nil {
			t.Errorf("%+v is valid", c)
		}
	}
	for _, c := range []minrate.Config{{}, {Rate: 1, Window: time.Second}} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
