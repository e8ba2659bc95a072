package bench

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// slowTasks is a TaskService whose GetTask and ListTaskDevices fail their
// first calls with fail's codes, then answer.
type slowTasks struct {
	otafleetv1connect.UnimplementedTaskServiceHandler
	mu    sync.Mutex
	fail  []connect.Code
	calls int
}

func (s *slowTasks) next() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if len(s.fail) == 0 {
		return nil
	}
	code := s.fail[0]
	s.fail = s.fail[1:]
	return connect.NewError(code, errors.New("actors: request timed out: t/t1"))
}

func (s *slowTasks) GetTask(context.Context, *connect.Request[v1.GetTaskRequest]) (*connect.Response[v1.GetTaskResponse], error) {
	if err := s.next(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetTaskResponse{Task: &v1.Task{TaskId: "t1", Status: v1.TaskStatus_TASK_STATUS_SUCCESS}}), nil
}

func (s *slowTasks) ListTaskDevices(context.Context, *connect.Request[v1.ListTaskDevicesRequest]) (*connect.Response[v1.ListTaskDevicesResponse], error) {
	if err := s.next(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.ListTaskDevicesResponse{Devices: []*v1.TaskDevice{{DeviceId: "d1"}}}), nil
}

// serveTasks serves h over HTTP/1.1 and h2c on loopback.
func serveTasks(t *testing.T, h otafleetv1connect.TaskServiceHandler) string {
	t.Helper()
	_, handler := otafleetv1connect.NewTaskServiceHandler(h)
	srv := httptest.NewUnstartedServer(handler)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// advancing moves clk past each timer armed until stop is called, so that
// backoff delays pass at once.
func advancing(clk *clocktest.Clock) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			default:
			}
			if next, ok := clk.NextDeadline(); ok {
				clk.AdvanceTo(next)
			}
			runtime.Gosched()
		}
	}()
	return func() { close(done); <-finished }
}

// TestBenchRidesOutSlowAnswers (issue 21): bench's task poll and device
// listing ask again, with backoff, when the server answers
// deadline_exceeded or unavailable (a task actor too busy to answer), and
// end at once on a real error such as not_found. Before, the first
// deadline_exceeded aborted the run.
func TestBenchRidesOutSlowAnswers(t *testing.T) {
	svc := &slowTasks{fail: []connect.Code{connect.CodeDeadlineExceeded, connect.CodeUnavailable, connect.CodeDeadlineExceeded}}
	clk := clocktest.New(time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC))
	r := &benchRun{clk: clk, api: NewAPI(serveTasks(t, svc), "token")}
	stop := advancing(clk)
	defer stop()
	ctx := context.Background()
	bo := &Backoff{Clock: clk}
	task, err := r.getTask(ctx, bo, "t1")
	if err != nil || task.Msg.GetTask().GetStatus() != v1.TaskStatus_TASK_STATUS_SUCCESS {
		t.Fatalf("getTask after three slow answers: %v, %v", task, err)
	}
	if svc.calls != 4 {
		t.Fatalf("%d calls, want 4", svc.calls)
	}

	// The count of failures restarts after a success: eight more in a row
	// are ridden out, the ninth is the error.
	svc.fail = []connect.Code{connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeUnavailable,
		connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeDeadlineExceeded}
	if page, err := r.taskDevices(ctx, bo, "t1", ""); err != nil || len(page.Msg.GetDevices()) != 1 {
		t.Fatalf("taskDevices after eight slow answers: %v, %v", page, err)
	}
	svc.fail = []connect.Code{connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeUnavailable,
		connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeUnavailable}
	if _, err := r.getTask(ctx, bo, "t1"); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("getTask after nine slow answers in a row: %v, want unavailable", err)
	}

	// A real error ends the poll at once.
	svc.calls = 0
	svc.fail = []connect.Code{connect.CodeNotFound}
	bo.Reset()
	if _, err := r.getTask(ctx, bo, "t1"); connect.CodeOf(err) != connect.CodeNotFound || svc.calls != 1 {
		t.Fatalf("getTask of a missing task: %v after %d calls, want not_found after 1", err, svc.calls)
	}
}
