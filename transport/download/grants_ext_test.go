package download_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/otafleet/otafleet/transport/download"
)

// keeper is a Server with Config.KeepGrants over the fixture's store, whose
// Authorize counts its asks and answers from denied; during, when set, runs
// inside an ask (a revocation racing with it).
type keeper struct {
	srv    *download.Server
	mu     sync.Mutex
	asks   int
	denied map[download.Grant]bool
	during func()
}

func newKeeper(t *testing.T, f *fixture) *keeper {
	t.Helper()
	k := &keeper{denied: map[download.Grant]bool{}}
	var err error
	k.srv, err = download.New(download.Config{
		Packages: f.store, Handles: f.store, Key: testKey("k1"), Clock: f.clock, KeepGrants: true,
		Authorize: func(_ context.Context, g download.Grant) error {
			k.mu.Lock()
			k.asks++
			during, denied := k.during, k.denied[g]
			k.mu.Unlock()
			if during != nil {
				during()
			}
			if denied {
				return errors.New("stopped")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *keeper) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.asks
}

func (k *keeper) deny(g download.Grant) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.denied[g] = true
}

// TestKeepGrants (issue 21): with KeepGrants, Authorize is asked on a
// grant's first request only, for a handle and a token alike, until Revoke
// names the grant's device: then the next request asks again, and is
// refused once the grant no longer holds. Another package is refused
// without asking. Revoking another device keeps the grant.
func TestKeepGrants(t *testing.T) {
	f := newFixture(t)
	k := newKeeper(t, f)
	ctx := context.Background()
	h, err := k.srv.Handle(ctx, f.grant)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := k.srv.Mint(f.grant)
	for i := range 5 {
		for _, token := range []string{h, tok} {
			if g, err := k.srv.Check(ctx, token, "fw"); err != nil || g != f.grant {
				t.Fatalf("request %d: %+v, %v", i, g, err)
			}
		}
	}
	if n := k.count(); n != 1 {
		t.Errorf("Authorize asked %d times for 10 requests of one grant, want 1", n)
	}
	if _, err := k.srv.Check(ctx, h, "other"); !errors.Is(err, download.ErrForbidden) {
		t.Errorf("the kept handle for another package: %v, want ErrForbidden", err)
	}
	if err := k.srv.Revoke(ctx, f.grant.TaskID, "dev-2", f.grant.Attempt); err != nil {
		t.Fatal(err)
	}
	if _, err := k.srv.Check(ctx, h, "fw"); err != nil || k.count() != 1 {
		t.Errorf("after revoking another device: %v, %d asks", err, k.count())
	}

	k.deny(f.grant)
	if _, err := k.srv.Check(ctx, h, "fw"); err != nil {
		t.Errorf("a kept grant, not yet revoked: %v", err)
	}
	if err := k.srv.Revoke(ctx, f.grant.TaskID, f.grant.DeviceID, f.grant.Attempt); err != nil {
		t.Fatal(err)
	}
	// The token asks again and is refused; the handle's record went
	// with the revocation, so it is unknown, and refused without asking.
	for range 2 {
		if _, err := k.srv.Check(ctx, tok, "fw"); !errors.Is(err, download.ErrForbidden) {
			t.Errorf("the token after Revoke: %v, want ErrForbidden", err)
		}
		if _, err := k.srv.Check(ctx, h, "fw"); !errors.Is(err, download.ErrInvalidToken) {
			t.Errorf("the handle after Revoke: %v, want ErrInvalidToken", err)
		}
	}
	if n := k.count(); n != 3 {
		t.Errorf("Authorize asked %d times, want 3 (each refused request of the token asks)", n)
	}
	// Over HTTP too: 403 for the token, 401 for the handle.
	ts := httptest.NewServer(k.srv.Handler())
	t.Cleanup(ts.Close)
	if r := do(t, ts.Client(), "GET", ts.URL+download.Path("fw"), tok); r.status != http.StatusForbidden {
		t.Errorf("GET with the token after Revoke: status %d, want 403", r.status)
	}
	if r := do(t, ts.Client(), "GET", ts.URL+download.Path("fw"), h); r.status != http.StatusUnauthorized {
		t.Errorf("GET with the handle after Revoke: status %d, want 401", r.status)
	}
}

// TestKeepGrantsRevokedWhileAsked: an answer of Authorize that a revocation
// of its device overtook (the job ended while it was asked) serves that
// request but is not kept: the next request asks again (a token), or finds
// the handle unknown, its record deleted by the revocation (a handle: a
// kept answer would have served it without looking its record up).
func TestKeepGrantsRevokedWhileAsked(t *testing.T) {
	for _, kind := range []string{"token", "handle"} {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t)
			k := newKeeper(t, f)
			ctx := context.Background()
			tok, _ := k.srv.Mint(f.grant)
			wantErr, wantAsks := download.ErrForbidden, 2
			if kind == "handle" {
				var err error
				if tok, err = k.srv.Handle(ctx, f.grant); err != nil {
					t.Fatal(err)
				}
				wantErr, wantAsks = download.ErrInvalidToken, 1
			}
			k.during = func() { _ = k.srv.Revoke(ctx, f.grant.TaskID, f.grant.DeviceID, f.grant.Attempt) }
			if _, err := k.srv.Check(ctx, tok, "fw"); err != nil {
				t.Fatal(err)
			}
			k.mu.Lock()
			k.during = nil
			k.mu.Unlock()
			k.deny(f.grant)
			if _, err := k.srv.Check(ctx, tok, "fw"); !errors.Is(err, wantErr) {
				t.Errorf("the next request: %v, want %v", err, wantErr)
			}
			if n := k.count(); n != wantAsks {
				t.Errorf("Authorize asked %d times, want %d", n, wantAsks)
			}
		})
	}
}

// TestWithoutKeepGrants: without KeepGrants, every request asks Authorize,
// and Revoke changes nothing.
func TestWithoutKeepGrants(t *testing.T) {
	f := newFixture(t)
	var asks int
	srv, err := download.New(download.Config{Packages: f.store, Handles: f.store, Key: testKey("k1"), Clock: f.clock,
		Authorize: func(context.Context, download.Grant) error { asks++; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := srv.Mint(f.grant)
	if err := srv.Revoke(context.Background(), f.grant.TaskID, f.grant.DeviceID, f.grant.Attempt); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := srv.Check(context.Background(), tok, "fw"); err != nil {
			t.Fatal(err)
		}
	}
	if asks != 3 {
		t.Errorf("Authorize asked %d times for 3 requests, want 3", asks)
	}
}
