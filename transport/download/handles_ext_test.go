package download_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
)

// handleRecords returns the handles whose records the fixture's store
// keeps.
func (f *fixture) handleRecords() []string {
	f.t.Helper()
	var hs []string
	if err := f.store.ListSessions(context.Background(), "download-handle", func(id string, _ []byte) error {
		hs = append(hs, id)
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
	return hs
}

func (f *fixture) deny(g download.Grant, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.denied[g] = err
}

// TestHandleRecordEndsWithItsAttempt (issue 21): the record of a handle
// lives while its attempt runs: Revoke of the attempt deletes it (Revoke
// of another attempt or device does not), the handle is then unknown
// (ErrInvalidToken, 4.01), and the same attempt's Handle again gives the
// same handle and a new record, which Check accepts.
func TestHandleRecordEndsWithItsAttempt(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h, err := f.srv.Handle(ctx, f.grant)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.handleRecords(); !slices.Equal(got, []string{h}) {
		t.Fatalf("records after Handle: %q, want [%q]", got, h)
	}
	for _, r := range []struct {
		task, device string
		attempt      uint32
	}{{"t1", "dev-1", 1}, {"t2", "dev-1", 2}, {"t1", "dev-2", 2}} {
		if err := f.srv.Revoke(ctx, r.task, r.device, r.attempt); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.handleRecords(); len(got) != 1 {
		t.Fatalf("records after revoking other attempts: %q, want [%q]", got, h)
	}
	if err := f.srv.Revoke(ctx, f.grant.TaskID, f.grant.DeviceID, f.grant.Attempt); err != nil {
		t.Fatal(err)
	}
	if got := f.handleRecords(); len(got) != 0 {
		t.Fatalf("records after Revoke: %q, want none", got)
	}
	if _, err := f.srv.Check(ctx, h, "fw"); !errors.Is(err, download.ErrInvalidToken) {
		t.Errorf("the handle after Revoke: %v, want ErrInvalidToken", err)
	}
	// Revoked again (a restart replays no effect, but a store may fail
	// half-way): nothing to delete, no error.
	if err := f.srv.Revoke(ctx, f.grant.TaskID, f.grant.DeviceID, f.grant.Attempt); err != nil {
		t.Errorf("Revoke again: %v", err)
	}

	// The same attempt writes its URI again (after a restart, say): the
	// same handle, valid again.
	restarted := f.newServer(testKey("k1"))
	again, err := restarted.Handle(ctx, f.grant)
	if err != nil || again != h {
		t.Fatalf("Handle again: %q, %v; want %q", again, err, h)
	}
	if g, err := restarted.Check(ctx, h, "fw"); err != nil || g != f.grant {
		t.Errorf("Check after Handle again: %+v, %v", g, err)
	}
	if err := restarted.Revoke(ctx, f.grant.TaskID, f.grant.DeviceID, f.grant.Attempt); err != nil {
		t.Fatal(err)
	}
	if got := f.handleRecords(); len(got) != 0 {
		t.Errorf("records after the second Revoke: %q, want none", got)
	}
}

// TestHandleOfNextAttempt (issue 21): a device runs one job, so a handle
// for another grant of the same device deletes the record of the one
// before (its revocation was missed); another device's records stay.
func TestHandleOfNextAttempt(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	next := f.grant
	next.Attempt++
	other := f.grant
	other.DeviceID = "dev-2"
	var hs []string
	for _, g := range []download.Grant{f.grant, other, next} {
		h, err := f.srv.Handle(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	want := []string{hs[1], hs[2]}
	slices.Sort(want)
	if got := f.handleRecords(); !slices.Equal(got, want) {
		t.Errorf("records: %q, want %q (not the first attempt's %q)", got, want, hs[0])
	}
	if _, err := f.srv.Check(ctx, hs[0], "fw"); !errors.Is(err, download.ErrInvalidToken) {
		t.Errorf("the first attempt's handle: %v, want ErrInvalidToken", err)
	}
}

// TestHandleRefusedForGood (issue 21): a handle whose record outlived its
// attempt (its revocation came while the server was down) is deleted when
// Check finds Authorize refusing its grant for good
// (transport.ErrDownloadRevoked), and kept when Authorize fails otherwise
// (it cannot judge: the engine is busy or stopping).
func TestHandleRefusedForGood(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h, err := f.srv.Handle(ctx, f.grant)
	if err != nil {
		t.Fatal(err)
	}
	restarted := f.newServer(testKey("k1"))
	f.deny(f.grant, errors.New("request timed out"))
	if _, err := restarted.Check(ctx, h, "fw"); !errors.Is(err, download.ErrForbidden) {
		t.Errorf("Authorize failing: %v, want ErrForbidden", err)
	}
	if got := f.handleRecords(); len(got) != 1 {
		t.Fatalf("records after a failed Authorize: %q, want [%q]", got, h)
	}
	f.deny(f.grant, fmt.Errorf("%w: device runs no job", transport.ErrDownloadRevoked))
	if _, err := restarted.Check(ctx, h, "fw"); !errors.Is(err, download.ErrForbidden) {
		t.Errorf("Authorize refusing: %v, want ErrForbidden", err)
	}
	if got := f.handleRecords(); len(got) != 0 {
		t.Fatalf("records after Authorize refused for good: %q, want none", got)
	}
	if _, err := restarted.Check(ctx, h, "fw"); !errors.Is(err, download.ErrInvalidToken) {
		t.Errorf("the handle afterwards: %v, want ErrInvalidToken", err)
	}
	// A token's refusal deletes nothing (a token has no record).
	tok, _ := restarted.Mint(f.grant)
	if _, err := restarted.Check(ctx, tok, "fw"); !errors.Is(err, download.ErrForbidden) {
		t.Errorf("the token: %v, want ErrForbidden", err)
	}
}

// TestSweepHandles (issue 21): at start, the records whose grant
// Authorize refuses for good, or that do not verify, are deleted; those
// it allows are kept and remembered, so that their revocation deletes
// them; those it cannot judge are left.
func TestSweepHandles(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	grant := func(dev string) download.Grant {
		g := f.grant
		g.DeviceID = dev
		return g
	}
	live, ended, unjudged := grant("live"), grant("ended"), grant("unjudged")
	hs := map[download.Grant]string{}
	for _, g := range []download.Grant{live, ended, unjudged} {
		h, err := f.srv.Handle(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		hs[g] = h
	}
	// A record that is not a grant under its handle (another key's).
	if err := f.store.PutSession(ctx, "download-handle", "AAAAAAAAAAAAAAAAAAAAAA", []byte("junk")); err != nil {
		t.Fatal(err)
	}
	f.deny(ended, fmt.Errorf("%w: device runs no job", transport.ErrDownloadRevoked))
	f.deny(unjudged, errors.New("request timed out"))

	restarted := f.newServer(testKey("k1"))
	visited, deleted, err := restarted.SweepHandles(ctx)
	if err != nil || visited != 4 || deleted != 2 {
		t.Fatalf("SweepHandles: %d visited, %d deleted, %v; want 4, 2", visited, deleted, err)
	}
	want := []string{hs[live], hs[unjudged]}
	slices.Sort(want)
	if got := f.handleRecords(); !slices.Equal(got, want) {
		t.Fatalf("records after the sweep: %q, want %q", got, want)
	}
	if err := restarted.Revoke(ctx, live.TaskID, live.DeviceID, live.Attempt); err != nil {
		t.Fatal(err)
	}
	if got := f.handleRecords(); !slices.Equal(got, []string{hs[unjudged]}) {
		t.Errorf("records after the live attempt's Revoke: %q, want [%q]", got, hs[unjudged])
	}
}

// TestSweepHandlesBounded: a sweep visits at most download.MaxSweep
// records; the next one goes on with those left.
func TestSweepHandlesBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("writes MaxSweep records")
	}
	f := newFixture(t)
	ctx := context.Background()
	n := download.MaxSweep + 10
	for i := range n {
		g := f.grant
		g.DeviceID = fmt.Sprintf("dev-%d", i)
		if _, err := f.srv.Handle(ctx, g); err != nil {
			t.Fatal(err)
		}
		f.deny(g, transport.ErrDownloadRevoked)
	}
	restarted := f.newServer(testKey("k1"))
	if v, d, err := restarted.SweepHandles(ctx); err != nil || v != download.MaxSweep || d != download.MaxSweep {
		t.Fatalf("first sweep: %d visited, %d deleted, %v; want %d, %d", v, d, err, download.MaxSweep, download.MaxSweep)
	}
	if v, d, err := restarted.SweepHandles(ctx); err != nil || v != 10 || d != 10 {
		t.Fatalf("second sweep: %d visited, %d deleted, %v; want 10, 10", v, d, err)
	}
	if got := f.handleRecords(); len(got) != 0 {
		t.Errorf("%d records left", len(got))
	}
}

var _ download.Handles = persistence.Sessions(nil)
