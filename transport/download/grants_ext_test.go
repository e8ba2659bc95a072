package download_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
)

// keeper is a Server with Config.KeepGrants over the fixture's store, whose
// Authorize counts its asks and answers from denied (refused for good, as
// the engine refuses an ended job); during, when set, runs inside an ask (a
// revocation racing with it).
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
				return fmt.Errorf("%w: stopped", transport.ErrDownloadRevoked)
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

// TestNoEntryOutlivesItsGrant (issue 21): the server's entry for a
// device's grant (the record of its handle, its kept authorization) ends
// with the grant, at each of its ends: Revoke of its attempt (the engine's
// RevokeToken), Revoke of another attempt of the device, Check refused
// for good, and a handle for another grant of the device. Its handle is
// then unknown and its token asked about again.
func TestNoEntryOutlivesItsGrant(t *testing.T) {
	ctx := context.Background()
	// start hands out f.grant's handle and checks it and a token, so that
	// the grant is kept: one entry.
	start := func(t *testing.T) (*fixture, *keeper, string, string) {
		t.Helper()
		f := newFixture(t)
		k := newKeeper(t, f)
		h, err := k.srv.Handle(ctx, f.grant)
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := k.srv.Mint(f.grant)
		for _, token := range []string{h, tok} {
			if _, err := k.srv.Check(ctx, token, "fw"); err != nil {
				t.Fatal(err)
			}
		}
		if n := download.GrantEntries(k.srv); n != 1 || k.count() != 1 {
			t.Fatalf("%d entries, %d asks after the first requests, want 1, 1", n, k.count())
		}
		return f, k, h, tok
	}
	// ended checks that no entry is left and that the grant's handle is
	// unknown and its token asked about again (and refused: it ended).
	ended := func(t *testing.T, f *fixture, k *keeper, h, tok string) {
		t.Helper()
		if n := download.GrantEntries(k.srv); n != 0 {
			t.Errorf("%d entries left, want 0", n)
		}
		if got := f.handleRecords(); len(got) != 0 {
			t.Errorf("records left: %q", got)
		}
		if _, err := k.srv.Check(ctx, h, "fw"); !errors.Is(err, download.ErrInvalidToken) {
			t.Errorf("the handle afterwards: %v, want ErrInvalidToken", err)
		}
		k.deny(f.grant)
		asks := k.count()
		if _, err := k.srv.Check(ctx, tok, "fw"); !errors.Is(err, download.ErrForbidden) || k.count() != asks+1 {
			t.Errorf("the token afterwards: %v, %d asks, want ErrForbidden after one more ask", err, k.count()-asks)
		}
		if n := download.GrantEntries(k.srv); n != 0 {
			t.Errorf("%d entries after the refused token, want 0", n)
		}
	}

	t.Run("Revoke of the attempt (RevokeToken)", func(t *testing.T) {
		f, k, h, tok := start(t)
		if err := k.srv.Revoke(ctx, f.grant.TaskID, f.grant.DeviceID, f.grant.Attempt); err != nil {
			t.Fatal(err)
		}
		ended(t, f, k, h, tok)
	})

	t.Run("Revoke of another attempt", func(t *testing.T) {
		// A token's grant (no record) ends with any revocation of its
		// device; a handle's grant keeps its entry, without its
		// authorization, until its own attempt's Revoke deletes its
		// record.
		f, k, h, tok := start(t)
		if err := k.srv.Revoke(ctx, f.grant.TaskID, f.grant.DeviceID, f.grant.Attempt-1); err != nil {
			t.Fatal(err)
		}
		if n := download.GrantEntries(k.srv); n != 1 {
			t.Fatalf("%d entries after revoking another attempt, want 1 (the handle's record)", n)
		}
		if _, err := k.srv.Check(ctx, tok, "fw"); err != nil || k.count() != 2 {
			t.Errorf("the token after revoking another attempt: %v, %d asks, want allowed after one more ask", err, k.count())
		}
		if err := k.srv.Revoke(ctx, f.grant.TaskID, f.grant.DeviceID, f.grant.Attempt); err != nil {
			t.Fatal(err)
		}
		ended(t, f, k, h, tok)

		other := f.grant
		other.DeviceID = "dev-2"
		tok2, _ := k.srv.Mint(other)
		if _, err := k.srv.Check(ctx, tok2, "fw"); err != nil || download.GrantEntries(k.srv) != 1 {
			t.Fatalf("a token of dev-2: %v, %d entries, want allowed and kept", err, download.GrantEntries(k.srv))
		}
		if err := k.srv.Revoke(ctx, other.TaskID, other.DeviceID, other.Attempt+1); err != nil {
			t.Fatal(err)
		}
		if n := download.GrantEntries(k.srv); n != 0 {
			t.Errorf("%d entries after revoking another attempt of a token's device, want 0", n)
		}
	})

	t.Run("Check refused for good", func(t *testing.T) {
		for _, by := range []string{"handle", "token"} {
			t.Run(by, func(t *testing.T) {
				// The grant's revocation was missed (it came while the
				// server was down): the restarted server remembers the
				// record it found running, and Authorize refuses the
				// grant for good.
				f, _, h, tok := start(t)
				restarted := newKeeper(t, f)
				if _, _, err := restarted.srv.SweepHandles(ctx); err != nil {
					t.Fatal(err)
				}
				if n := download.GrantEntries(restarted.srv); n != 1 {
					t.Fatalf("%d entries after the sweep, want 1", n)
				}
				restarted.deny(f.grant)
				token := map[string]string{"handle": h, "token": tok}[by]
				if _, err := restarted.srv.Check(ctx, token, "fw"); !errors.Is(err, download.ErrForbidden) {
					t.Fatalf("Check refused: %v, want ErrForbidden", err)
				}
				ended(t, f, restarted, h, tok)
			})
		}
		// Refused by an Authorize that cannot judge: the entry stays.
		f := newFixture(t)
		h, err := f.srv.Handle(ctx, f.grant)
		if err != nil {
			t.Fatal(err)
		}
		f.deny(f.grant, errors.New("request timed out"))
		if _, err := f.srv.Check(ctx, h, "fw"); !errors.Is(err, download.ErrForbidden) || download.GrantEntries(f.srv) != 1 {
			t.Errorf("Authorize failing: %v, %d entries; want ErrForbidden, 1", err, download.GrantEntries(f.srv))
		}
	})

	t.Run("Handle of another grant of the device", func(t *testing.T) {
		f, k, h, tok := start(t)
		next := f.grant
		next.Attempt++
		hNext, err := k.srv.Handle(ctx, next)
		if err != nil {
			t.Fatal(err)
		}
		if n := download.GrantEntries(k.srv); n != 1 {
			t.Errorf("%d entries, want 1 (the next attempt's)", n)
		}
		if got := f.handleRecords(); !slices.Equal(got, []string{hNext}) {
			t.Errorf("records: %q, want [%q]", got, hNext)
		}
		// The first attempt's kept authorization went with its entry:
		// its handle is unknown, its token asked about again.
		if _, err := k.srv.Check(ctx, h, "fw"); !errors.Is(err, download.ErrInvalidToken) {
			t.Errorf("the first attempt's handle: %v, want ErrInvalidToken", err)
		}
		k.deny(f.grant)
		if _, err := k.srv.Check(ctx, tok, "fw"); !errors.Is(err, download.ErrForbidden) || k.count() != 2 {
			t.Errorf("the first attempt's token: %v, %d asks; want ErrForbidden after one more ask", err, k.count())
		}
		if _, err := k.srv.Check(ctx, hNext, "fw"); err != nil {
			t.Errorf("the next attempt's handle: %v", err)
		}
		if err := k.srv.Revoke(ctx, next.TaskID, next.DeviceID, next.Attempt); err != nil {
			t.Fatal(err)
		}
		if n := download.GrantEntries(k.srv); n != 0 {
			t.Errorf("%d entries after the next attempt's Revoke, want 0", n)
		}
	})
}
