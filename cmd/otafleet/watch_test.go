package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// flakyWatch is a TaskService whose WatchTask streams follow a script: each
// call sends its states, then fails with its code (0: ends cleanly).
type flakyWatch struct {
	otafleetv1connect.UnimplementedTaskServiceHandler
	mu     sync.Mutex
	script []watchCall
	calls  int
}

type watchCall struct {
	states []v1.TaskStatus
	code   connect.Code
}

func (f *flakyWatch) WatchTask(_ context.Context, req *connect.Request[v1.WatchTaskRequest], stream *connect.ServerStream[v1.WatchTaskResponse]) error {
	f.mu.Lock()
	c := f.script[min(f.calls, len(f.script)-1)]
	f.calls++
	f.mu.Unlock()
	for i, st := range c.states {
		t := &v1.Task{TaskId: req.Msg.GetTaskId(), Status: st, Progress: &v1.TaskProgress{Total: 2, Success: uint32(i)}}
		if err := stream.Send(&v1.WatchTaskResponse{Task: t}); err != nil {
			return err
		}
	}
	if c.code != 0 {
		return connect.NewError(c.code, errors.New("actors: request timed out: t/t1"))
	}
	return nil
}

// runWatch runs `otafleet task watch --json t1` against svc served on
// loopback (HTTP/1.1 and h2c).
func runWatch(t *testing.T, svc otafleetv1connect.TaskServiceHandler) (int, string, string) {
	t.Helper()
	_, h := otafleetv1connect.NewTaskServiceHandler(svc)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"task", "watch", "--api", srv.URL, "--token", "x", "--json", "t1"}, &out, &errb)
	return code, out.String(), errb.String()
}

// TestTaskWatchRidesOutSlowAnswers (issue 21): `task watch` opens the watch
// again, with backoff, when the server answers deadline_exceeded or
// unavailable (at the start or in the middle of a stream), and follows the
// task to its end; a real error (not_found) ends it at once, exit 1.
func TestTaskWatchRidesOutSlowAnswers(t *testing.T) {
	processing, success := v1.TaskStatus_TASK_STATUS_PROCESSING, v1.TaskStatus_TASK_STATUS_SUCCESS
	svc := &flakyWatch{script: []watchCall{
		{code: connect.CodeDeadlineExceeded},
		{states: []v1.TaskStatus{processing}, code: connect.CodeUnavailable},
		{states: []v1.TaskStatus{processing, processing, success}},
	}}
	code, out, errb := runWatch(t, svc)
	if code != 0 || svc.calls != 3 {
		t.Fatalf("exit %d after %d calls (want 0 after 3); stderr:\n%s", code, svc.calls, errb)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.Contains(lines[3], "TASK_STATUS_SUCCESS") {
		t.Fatalf("watched:\n%s", out)
	}

	missing := &flakyWatch{script: []watchCall{{code: connect.CodeNotFound}}}
	code, _, errb = runWatch(t, missing)
	if code != 1 || missing.calls != 1 || !strings.Contains(errb, "not_found") {
		t.Fatalf("watch of a missing task: exit %d after %d calls; stderr:\n%s", code, missing.calls, errb)
	}
}
