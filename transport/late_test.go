package transport_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport"
)

// uplinks records deliveries and answers them with err.
type uplinks struct {
	err error
	mu  sync.Mutex
	got []string
}

func (u *uplinks) Deliver(_ context.Context, id string, in *messages.DeviceInput) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.got = append(u.got, fmt.Sprintf("%s %T", id, in.GetKind()))
	return u.err
}

func (u *uplinks) deliveries() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.got...)
}

// downlinks records downlinks and revocations and answers them with err.
type downlinks struct {
	err error
	mu  sync.Mutex
	got []string
}

func (d *downlinks) Send(_ context.Context, dl *messages.Downlink) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.got = append(d.got, "send "+dl.GetDeviceId())
	return d.err
}

func (d *downlinks) RevokeToken(_ context.Context, r *messages.RevokeToken) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.got = append(d.got, "revoke "+r.GetDeviceId())
	return d.err
}

var connected = &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}}

func TestLateUplinks(t *testing.T) {
	ctx := context.Background()
	var l transport.LateUplinks
	if err := l.Deliver(ctx, "d1", connected); !errors.Is(err, transport.ErrNoUplinks) {
		t.Fatalf("Deliver before Set: %v, want ErrNoUplinks", err)
	}
	refused := errors.New("refused")
	first, second := &uplinks{}, &uplinks{err: refused}
	l.Set(first)
	if err := l.Deliver(ctx, "d1", connected); err != nil {
		t.Fatalf("Deliver after Set: %v", err)
	}
	l.Set(second)
	if err := l.Deliver(ctx, "d2", connected); !errors.Is(err, refused) {
		t.Fatalf("Deliver to the second Uplinks: %v, want its error", err)
	}
	l.Set(nil)
	if err := l.Deliver(ctx, "d3", connected); !errors.Is(err, transport.ErrNoUplinks) {
		t.Fatalf("Deliver after Set(nil): %v, want ErrNoUplinks", err)
	}
	want := "d1 *messages.DeviceInput_Connected"
	if got := first.deliveries(); len(got) != 1 || got[0] != want {
		t.Errorf("first got %q, want [%q]", got, want)
	}
	want = "d2 *messages.DeviceInput_Connected"
	if got := second.deliveries(); len(got) != 1 || got[0] != want {
		t.Errorf("second got %q, want [%q]", got, want)
	}
}

func TestLateDownlinks(t *testing.T) {
	ctx := context.Background()
	dl := &messages.Downlink{DeviceId: "d1"}
	rt := &messages.RevokeToken{DeviceId: "d1", TaskId: "t1", Attempt: 1}
	var l transport.LateDownlinks
	if err := l.Send(ctx, dl); !errors.Is(err, transport.ErrNoDownlinks) {
		t.Fatalf("Send before Set: %v, want ErrNoDownlinks", err)
	}
	if err := l.RevokeToken(ctx, rt); err != nil {
		t.Fatalf("RevokeToken before Set: %v, want nil (nothing to revoke)", err)
	}
	failing := errors.New("no route")
	d := &downlinks{err: failing}
	l.Set(d)
	if err := l.Send(ctx, dl); !errors.Is(err, failing) {
		t.Fatalf("Send after Set: %v, want the adapter's error", err)
	}
	if err := l.RevokeToken(ctx, rt); !errors.Is(err, failing) {
		t.Fatalf("RevokeToken after Set: %v, want the adapter's error", err)
	}
	l.Set(nil)
	if err := l.Send(ctx, dl); !errors.Is(err, transport.ErrNoDownlinks) {
		t.Fatalf("Send after Set(nil): %v, want ErrNoDownlinks", err)
	}
	d.mu.Lock()
	got := fmt.Sprint(d.got)
	d.mu.Unlock()
	if want := "[send d1 revoke d1]"; got != want {
		t.Errorf("the adapter got %s, want %s", got, want)
	}
}

// TestLateConcurrent: Set races with Deliver and Send (run with -race).
func TestLateConcurrent(t *testing.T) {
	ctx := context.Background()
	var up transport.LateUplinks
	var down transport.LateDownlinks
	u, d := &uplinks{}, &downlinks{}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 100 {
				if i == 0 && j%10 == 0 {
					up.Set(u)
					down.Set(d)
				}
				if err := up.Deliver(ctx, "d", connected); err != nil && !errors.Is(err, transport.ErrNoUplinks) {
					t.Errorf("Deliver: %v", err)
				}
				if err := down.Send(ctx, &messages.Downlink{DeviceId: "d"}); err != nil && !errors.Is(err, transport.ErrNoDownlinks) {
					t.Errorf("Send: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if err := up.Deliver(ctx, "d", connected); err != nil {
		t.Errorf("Deliver once set: %v", err)
	}
}
