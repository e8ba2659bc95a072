package actors_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// TestFencedActorStops: two engines on one PostgreSQL database both run
// the same device actor (as two nodes of a cluster may for a moment).
// When the second has written the device's stream, the first one's next
// append fails (persistence.ErrConflict): the actor stops instead of
// retrying, and the report it could not journal goes to its successor,
// which recovers the stream (with the other engine's write) and journals
// it. Nothing is lost and the journal has no gap.
func TestFencedActorStops(t *testing.T) {
	clk := clocktest.New(epoch)
	j := newPGJournal(t, pgtest.Shared(t), false)
	regA := prometheus.NewRegistry()
	engine := func(reg *prometheus.Registry) *actors.Engine {
		e, err := actors.New(actors.Config{PassivateAfter: time.Hour}, actors.Deps{
			Store: j.open(t), Clock: clk, Transport: dropAll{}, Metrics: reg,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Stop)
		return e
	}
	a, b := engine(regA), engine(prometheus.NewRegistry())
	ctx := context.Background()
	report := func(e *actors.Engine, fw string) {
		t.Helper()
		if err := e.Deliver(ctx, "dev-1", &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{
			VersionReported: &messages.VersionReported{FwVersion: &fw},
		}}); err != nil {
			t.Fatalf("report %s: %v", fw, err)
		}
	}
	version := func(e *actors.Engine) string {
		t.Helper()
		v, err := e.Device(ctx, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		return v.State.FwVersion
	}
	report(a, "1.0") // a's actor is live, at the stream's first write
	report(b, "1.1") // b's actor recovers it and writes after it
	report(a, "1.2") // a's append conflicts: fenced, its successor journals it
	a.Settle()
	fenced := counterValue(t, regA, "otafleet_actors_fenced_total", "device")
	if fenced != 1 {
		t.Errorf("fenced actors on a: %v, want 1", fenced)
	}
	if got := version(a); got != "1.2" {
		t.Errorf("a's device reports firmware %q, want 1.2", got)
	}
	var versions []string
	var last uint64
	err := j.open(t).Load(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: "dev-1"}, 0, func(ev persistence.Event) error {
		if ev.Seq != last+1 {
			t.Errorf("event %d after %d", ev.Seq, last)
		}
		last = ev.Seq
		de := &messages.DeviceEvent{}
		if err := proto.Unmarshal(ev.Payload, de); err != nil {
			return err
		}
		if vr := de.GetVersionRecorded(); vr != nil {
			versions = append(versions, vr.GetFwVersion())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"1.0", "1.1", "1.2"}; !slices.Equal(versions, want) {
		t.Errorf("journaled versions %v, want %v", versions, want)
	}
}

// dropAll is the transport of an engine no device connects to.
type dropAll struct{}

func (dropAll) Send(context.Context, *messages.Downlink) error { return memtransport.ErrUnknownDevice }
func (dropAll) RevokeToken(context.Context, *messages.RevokeToken) error {
	return memtransport.ErrUnknownDevice
}

// TestClusterConfigChecked: a cluster section is validated by New, and an
// engine built with one but never started stops cleanly.
func TestClusterConfigChecked(t *testing.T) {
	deps := actors.Deps{Store: memstore.New(), Clock: clocktest.New(epoch), Transport: dropAll{}}
	for _, bad := range []actors.ClusterConfig{
		{Name: "x", BindAddr: "127.0.0.1:0"},
		{Etcd: []string{"127.0.0.1:2379"}, BindAddr: "127.0.0.1:0"},
		{Etcd: []string{"127.0.0.1:2379"}, Name: "x", BindAddr: "nohostport"},
		{Etcd: []string{"127.0.0.1:2379"}, Name: "x", BindAddr: "127.0.0.1:0", AdvertiseAddr: "10.0.0.1:0"},
		{Etcd: []string{"127.0.0.1:2379"}, Name: "x", BindAddr: "127.0.0.1:0", Lease: 500 * time.Millisecond},
		{Etcd: []string{"127.0.0.1:2379"}, Name: "x", BindAddr: "127.0.0.1:0", Lease: 2 * time.Minute},
	} {
		if _, err := actors.New(actors.Config{Cluster: &bad}, deps); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	e, err := actors.New(actors.Config{Cluster: &actors.ClusterConfig{Etcd: []string{"127.0.0.1:2379"}, Name: "x", BindAddr: "127.0.0.1:0"}}, deps)
	if err != nil {
		t.Fatal(err)
	}
	e.Stop()
	if _, ok := e.Cluster(); !ok {
		t.Error("Cluster() of a clustered engine: not ok")
	}
}

// TestFencedCommandIsAnswered: a task command whose append another
// activation fenced is answered by the fenced actor's successor, not lost.
func TestFencedCommandIsAnswered(t *testing.T) {
	clk := clocktest.New(epoch)
	j := newPGJournal(t, pgtest.Shared(t), false)
	regA := prometheus.NewRegistry()
	engine := func(reg *prometheus.Registry) *actors.Engine {
		e, err := actors.New(actors.Config{PassivateAfter: time.Hour}, actors.Deps{
			Store: j.open(t), Clock: clk, Transport: dropAll{}, Metrics: reg,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Stop)
		return e
	}
	a, b := engine(regA), engine(prometheus.NewRegistry())
	ctx := context.Background()
	policy := &messages.Policy{ScheduleTimeUnixNano: messages.UnixNano(epoch.Add(time.Hour))} // nothing starts yet
	if err := a.CreateTask(ctx, createTask("t1", messages.Protocol_PROTOCOL_MQTT, []string{"d1", "d2"}, policy)); err != nil {
		t.Fatal(err)
	}
	if err := b.StopTask(ctx, "t1"); err != nil { // b's actor recovers t1 and writes after a's
		t.Fatal(err)
	}
	// a's actor still has t1 running: its step journals, the append
	// conflicts, and its successor (which sees the stop) answers.
	err := a.StopTask(ctx, "t1")
	if err != nil && !errors.Is(err, taskfsm.ErrInvalidTransition) {
		t.Fatalf("StopTask on the fenced engine: %v", err)
	}
	if got := counterValue(t, regA, "otafleet_actors_fenced_total", "task"); got != 1 {
		t.Errorf("fenced tasks on a: %v, want 1", got)
	}
	v, err := a.Task(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if !v.Status.Final() && v.Status != messages.TaskStatus_TASK_STATUS_STOPPING {
		t.Errorf("a reads t1 as %v after two stops", v.Status)
	}
}
