package rpc

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

type dropDownlinks struct{}

func (dropDownlinks) Send(context.Context, *messages.Downlink) error           { return nil }
func (dropDownlinks) RevokeToken(context.Context, *messages.RevokeToken) error { return nil }

// FuzzCreateTask decodes arbitrary bytes into a CreateTaskRequest and hands
// it to the handler over a real engine: it must answer, never panic, and
// an accepted task must exist with every target of the package's product.
func FuzzCreateTask(f *testing.F) {
	ctx := context.Background()
	st := memstore.New()
	clk := clocktest.New(time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC))
	must := func(err error) {
		if err != nil {
			f.Fatal(err)
		}
	}
	must(st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolLWM2M}))
	must(st.PutProduct(ctx, persistence.Product{ID: "q", Name: "q", Protocol: persistence.ProtocolMQTT}))
	must(st.CreateDevices(ctx, []persistence.Device{{ID: "d1", ProductID: "p"}, {ID: "d2", ProductID: "p"}, {ID: "m1", ProductID: "q"}}))
	must(st.PutGroup(ctx, persistence.Group{ID: "g", Name: "g", DeviceIDs: []string{"d2", "gone", "m1"}}))
	must(st.PutGroup(ctx, persistence.Group{ID: "h", Name: "h", DeviceIDs: []string{"d2"}}))
	must(st.PutPackage(ctx, persistence.Package{ID: "k", ProductID: "p", Type: persistence.PackageFirmware, Version: "2.0", FileName: "f", Size: 1}))
	eng, err := actors.New(actors.Config{}, actors.Deps{Store: st, Clock: clk, Transport: dropDownlinks{}})
	must(err)
	must(eng.Start(ctx))
	f.Cleanup(eng.Stop)
	s := &taskServer{server: newServer(Deps{Registry: st, Engine: eng, Store: st, Token: "t", Clock: clk})}

	rc, ri := uint32(2), uint32(0)
	seed(f, &v1.CreateTaskRequest{Name: "t_1", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: "k", DeviceIds: []string{"d1"}, GroupIds: []string{"h"}})
	seed(f, &v1.CreateTaskRequest{Name: "t", TaskType: 1, PackageId: "k", GroupIds: []string{"g"}})
	seed(f, &v1.CreateTaskRequest{Name: "t", TaskType: 1, PackageId: "k", DeviceIds: []string{"d1"}, Policy: &v1.Policy{RetryCount: &rc, RetryIntervalMinutes: &ri}})
	seed(f, &v1.CreateTaskRequest{Name: "t", TaskType: 1, PackageId: "k", DeviceIds: []string{"d1"}, Policy: &v1.Policy{
		ScheduleTime: timestamppb.New(clk.Now().Add(time.Hour)), Window: &v1.Window{StartMinute: 1380, EndMinute: 60, TimeZone: "Asia/Shanghai"},
	}})
	seed(f, &v1.CreateTaskRequest{Name: "t", TaskType: 2, PackageId: "k", DeviceIds: []string{"m1"}})
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(v1.CreateTaskRequest)
		if proto.Unmarshal(b, req) != nil {
			return
		}
		res, err := s.CreateTask(ctx, connect.NewRequest(req))
		if err != nil {
			switch connect.CodeOf(err) {
			case connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodeFailedPrecondition:
			default:
				t.Fatalf("CreateTask: %v", err)
			}
			return
		}
		id := res.Msg.GetTask().GetTaskId()
		v, err := eng.TaskDevices(ctx, id, 0, 1000, 0)
		if err != nil {
			t.Fatalf("created task %s: %v", id, err)
		}
		if len(v.Subtasks) == 0 || v.Progress.Total != len(v.Subtasks) {
			t.Fatalf("task %s has %d sub-tasks, total %d", id, len(v.Subtasks), v.Progress.Total)
		}
		for _, sub := range v.Subtasks {
			if sub.DeviceID != "d1" && sub.DeviceID != "d2" {
				t.Fatalf("task %s targets %s", id, sub.DeviceID)
			}
		}
	})
}
