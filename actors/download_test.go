package actors_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
)

// newDownloadEngine starts an engine whose device dev-1 runs attempt 1 of
// task t1 (an MQTT device that is offline: the job waits for it), and whose
// device dev-2 is known (it connected once) but runs no job.
func newDownloadEngine(t *testing.T) (*actors.Engine, *memstore.Store) {
	t.Helper()
	ctx := context.Background()
	store := memstore.New()
	e, _ := newDeliverEngine(t, store, nil, nil)
	if err := e.CreateTask(ctx, createTask("t1", messages.Protocol_PROTOCOL_MQTT, []string{"dev-1"}, nil)); err != nil {
		t.Fatal(err)
	}
	if err := e.Deliver(ctx, "dev-2", &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}}); err != nil {
		t.Fatal(err)
	}
	e.Settle()
	v, err := e.Device(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if j := v.State.Job; j.GetTaskId() != "t1" || j.GetAttempt() != 1 {
		t.Fatalf("dev-1 runs %v, want task t1 attempt 1", j)
	}
	return e, store
}

// TestAuthorizeDownload (issue 19): a download grant holds only while its
// (task, attempt) is the device's running job; every other grant is refused
// with ErrDownloadRevoked and an error that names what the device runs.
func TestAuthorizeDownload(t *testing.T) {
	ctx := context.Background()
	e, _ := newDownloadEngine(t)
	running := transport.DownloadGrant{TaskID: "t1", DeviceID: "dev-1", Attempt: 1, PackageID: "pkg-t1"}
	if err := e.AuthorizeDownload(ctx, running); err != nil {
		t.Fatalf("the running job's grant: %v", err)
	}
	for _, tc := range []struct {
		name string
		g    transport.DownloadGrant
		says string
	}{
		{"another attempt", transport.DownloadGrant{TaskID: "t1", DeviceID: "dev-1", Attempt: 2, PackageID: "pkg-t1"}, `runs task "t1" attempt 1 (the token is for task "t1" attempt 2)`},
		{"another task", transport.DownloadGrant{TaskID: "t0", DeviceID: "dev-1", Attempt: 1, PackageID: "pkg-t1"}, `runs task "t1" attempt 1 (the token is for task "t0" attempt 1)`},
		{"no job", transport.DownloadGrant{TaskID: "t1", DeviceID: "dev-2", Attempt: 1, PackageID: "pkg-t1"}, `"dev-2" runs no job`},
		{"unknown device", transport.DownloadGrant{TaskID: "t1", DeviceID: "nobody", Attempt: 1, PackageID: "pkg-t1"}, `"nobody" runs no job`},
	} {
		err := e.AuthorizeDownload(ctx, tc.g)
		if !errors.Is(err, actors.ErrDownloadRevoked) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %v, want actors.ErrDownloadRevoked saying %q", tc.name, err, tc.says)
		}
	}
	// An ID that cannot exist is the query's error, not a revocation.
	if err := e.AuthorizeDownload(ctx, transport.DownloadGrant{TaskID: "t1", Attempt: 1}); err == nil || errors.Is(err, actors.ErrDownloadRevoked) {
		t.Errorf("an empty device ID: %v, want the ID's error", err)
	}

	// Stopping the task ends the job: the same grant is revoked.
	if err := e.StopTask(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	e.Settle()
	if err := e.AuthorizeDownload(ctx, running); !errors.Is(err, actors.ErrDownloadRevoked) {
		t.Errorf("after StopTask: %v, want actors.ErrDownloadRevoked", err)
	}
	e.Stop()
	if err := e.AuthorizeDownload(ctx, running); !errors.Is(err, actors.ErrClosed) {
		t.Errorf("after Stop: %v, want actors.ErrClosed", err)
	}
}

// TestDownloadServed (issue 19): bytes served under the running job's grant
// become a note on the device's timeline; bytes served under another
// attempt's grant are ignored.
func TestDownloadServed(t *testing.T) {
	ctx := context.Background()
	e, store := newDownloadEngine(t)
	e.DownloadServed(transport.DownloadGrant{TaskID: "t1", DeviceID: "dev-1", Attempt: 1, PackageID: "pkg-t1"}, 0, 100, 1000)
	e.DownloadServed(transport.DownloadGrant{TaskID: "t1", DeviceID: "dev-1", Attempt: 2, PackageID: "pkg-t1"}, 100, 100, 1000)
	e.DownloadServed(transport.DownloadGrant{TaskID: "t1", DeviceID: "dev-1", Attempt: 1, PackageID: "pkg-t1"}, 100, 900, 1000)
	e.Settle()
	var notes []string
	err := store.Load(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: "dev-1"}, 0, func(ev persistence.Event) error {
		var de messages.DeviceEvent
		if err := proto.Unmarshal(ev.Payload, &de); err != nil {
			return err
		}
		if n := de.GetNoted(); n != nil && strings.HasPrefix(n.GetText(), "package bytes") {
			notes = append(notes, n.GetText())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"package bytes 0-99 of 1000 served (10%)", "package bytes 100-999 of 1000 served (100%)"}
	if strings.Join(notes, "\n") != strings.Join(want, "\n") {
		t.Errorf("timeline notes:\n%s\nwant:\n%s", strings.Join(notes, "\n"), strings.Join(want, "\n"))
	}
}
