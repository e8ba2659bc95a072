package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/internal/clock"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// rawConn dials addr and writes s.
func rawConn(t *testing.T, addr, s string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
	return c
}

// slowLoris is the start of a request whose headers never end.
const slowLoris = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "

// awaitClosed reads c until the server closes it; the deadline only bounds
// a failure.
func awaitClosed(t *testing.T, what string, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(clock.Real().Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("%s: not closed by the server: %v", what, err)
	}
}

// awaitNoAnswer fails if the server answers c within a short while: the
// connection waits to be accepted.
func awaitNoAnswer(t *testing.T, what string, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(clock.Real().Now().Add(300 * time.Millisecond))
	var b [1]byte
	n, err := c.Read(b[:])
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%s: answered beyond the connection limit (%d bytes, %v)", what, n, err)
	}
}

// awaitStatus reads c's response and wants status code.
func awaitStatus(t *testing.T, what string, c net.Conn, r *bufio.Reader, code int) {
	t.Helper()
	_ = c.SetReadDeadline(clock.Real().Now().Add(20 * time.Second))
	res, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != code {
		t.Fatalf("%s: status %d, want %d", what, res.StatusCode, code)
	}
}

// TestServeHTTPLimits: on the API and the download server, a request whose
// headers do not end in --http-header-timeout is cut, connections beyond
// --api-max-conns / --download-max-conns wait until one closes, a
// kept-alive connection is closed after --http-idle-timeout, and an upload
// slower than --min-transfer-rate is cut.
func TestServeHTTPLimits(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, "--data-dir", dir, "--api-addr", "127.0.0.1:0", "--download-addr", "127.0.0.1:0", "--download-tls=false",
		"--mqtt-addr", "", "--coap-addr", "", "--coaps-addr", "", "--log-format", "json",
		"--api-max-conns", "2", "--download-max-conns", "1", "--http-header-timeout", "1s", "--http-idle-timeout", "1s",
		"--min-transfer-rate", "1000000", "--min-transfer-window", "200ms")
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

	// The API: two slow-loris connections take both slots.
	l1 := rawConn(t, addrs["api"], slowLoris)
	l2 := rawConn(t, addrs["api"], slowLoris)
	c := rawConn(t, addrs["api"], "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	awaitNoAnswer(t, "API", c)
	awaitClosed(t, "API slow-loris 1", l1)
	awaitClosed(t, "API slow-loris 2", l2)
	cr := bufio.NewReader(c)
	awaitStatus(t, "API metrics after the slow-loris", c, cr, http.StatusOK)
	// Kept alive, then closed when idle.
	_ = c.SetReadDeadline(clock.Real().Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, cr); err != nil {
		t.Fatalf("idle API connection: not closed: %v", err)
	}

	// An upload (with the token) that stalls is cut.
	tok, err := os.ReadFile(filepath.Join(dir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	up := rawConn(t, addrs["api"], fmt.Sprintf("POST /otafleet.v1.PackageService/CreatePackage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/proto\r\nContent-Length: %d\r\n\r\n%s", strings.TrimSpace(string(tok)), 1<<20, strings.Repeat("x", 1000)))
	awaitClosed(t, "stalled upload", up)

	// What needs no token passes the check; the profiles need it.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, c := range []struct {
		path, token string
		code        int
	}{
		{"/metrics", "", http.StatusOK},
		{"/grpc.health.v1.Health/Check", "", http.StatusOK},
		{"/debug/pprof/", "", http.StatusUnauthorized},
		{"/debug/pprof/", "wrong", http.StatusUnauthorized},
		{"/debug/pprof/", strings.TrimSpace(string(tok)), http.StatusOK},
	} {
		method, body := http.MethodGet, io.Reader(nil)
		if strings.HasPrefix(c.path, "/grpc.") {
			method, body = http.MethodPost, strings.NewReader("{}")
		}
		req, _ := http.NewRequest(method, "http://"+addrs["api"]+c.path, body)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != c.code {
			t.Errorf("%s with token %q: status %d, want %d", c.path, c.token, res.StatusCode, c.code)
		}
	}

	// The download server, with one slot.
	d1 := rawConn(t, addrs["download"], "GET /packages/p HTTP/1.1\r\nHost: x\r\nAuthori")
	d2 := rawConn(t, addrs["download"], "GET /packages/p HTTP/1.1\r\nHost: x\r\n\r\n")
	awaitNoAnswer(t, "download", d2)
	awaitClosed(t, "download slow-loris", d1)
	awaitStatus(t, "download without a token", d2, bufio.NewReader(d2), http.StatusUnauthorized)
}

// TestServeWatchOutlivesTimeouts: a WatchTask stream lasts beyond the
// header and idle timeouts and the minimum rate's window (a slow-loris
// connection is cut meanwhile), and ends with the task.
func TestServeWatchOutlivesTimeouts(t *testing.T) {
	e := startE2E(t, 3, "--simulate-campaign", "--simulate-delay", "300ms",
		"--http-header-timeout", "200ms", "--http-idle-timeout", "200ms", "--min-transfer-rate", "1000000", "--min-transfer-window", "200ms")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tasks, err := e.tasks.ListTasks(ctx, connect.NewRequest(&v1.ListTasksRequest{}))
	if err != nil || len(tasks.Msg.GetTasks()) != 1 {
		t.Fatalf("the campaign: %v %v", tasks, err)
	}
	stream, err := e.tasks.WatchTask(ctx, connect.NewRequest(&v1.WatchTaskRequest{TaskId: tasks.Msg.GetTasks()[0].GetTaskId()}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatalf("no first message: %v", stream.Err())
	}
	if s := stream.Msg().GetTask().GetStatus(); s == v1.TaskStatus_TASK_STATUS_SUCCESS {
		t.Fatal("the campaign ended before the test could watch it")
	}
	api := e.api[len("http://"):]
	awaitClosed(t, "API slow-loris", rawConn(t, api, slowLoris))
	now, err := e.tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: tasks.Msg.GetTasks()[0].GetTaskId()}))
	if err != nil || now.Msg.GetTask().GetStatus() == v1.TaskStatus_TASK_STATUS_SUCCESS {
		t.Fatalf("the campaign ended before the timeouts passed: %v %v", now, err)
	}
	var last *v1.Task
	n := 0
	for stream.Receive() {
		last = stream.Msg().GetTask()
		n++
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("the stream ended with %v after %d more messages", err, n)
	}
	if last.GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS || n == 0 {
		t.Fatalf("watched %d more messages, to %v", n, last)
	}
}
