package download

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/otafleet/otafleet/transport"
)

// A handle's record (Config.Handles, under handleSessions) lives as long as
// its attempt, not longer (issue 21: one record of about 200 bytes per
// LwM2M attempt, forever, otherwise). It is deleted:
//
//   - by Revoke, at the end of the attempt (the engine's RevokeToken), for
//     the grant this server handed out a handle for (Handle) or found
//     running (SweepHandles);
//   - by Handle, when it hands out a handle for another grant of the same
//     device: a device runs one job, so its earlier attempt has ended;
//   - by Check, when Authorize refuses a handle's grant for good (an error
//     wrapping transport.ErrDownloadRevoked);
//   - by SweepHandles, at start, for the grants whose attempt ended while
//     the server was down (their revocation never reached it).
//
// A handle checked after its record is gone is unknown (ErrInvalidToken,
// 4.01), and the same attempt writing its URI again gets the same handle
// (it is the grant's MAC) and a new record.

// maxIssued bounds the grants a Server remembers handing out handles for,
// one per device with an LwM2M attempt under way. Past it, a grant is not
// remembered: its record is deleted lazily (Check) or at the next start
// (SweepHandles).
const maxIssued = 1 << 20

// MaxSweep bounds the records SweepHandles visits per call: the records
// alive are about one per LwM2M attempt under way; more (those of a store
// written before records were deleted) are swept over several starts, and
// by Check as their devices ask.
const MaxSweep = 1 << 16

// issued is, for each device, the grant a Server last handed out (or found
// running) a handle for, whose record Revoke deletes. Its methods are safe
// for concurrent use.
type issued struct {
	mu       sync.Mutex
	byDevice map[string]Grant
}

func newIssued() *issued { return &issued{byDevice: map[string]Grant{}} }

// set remembers g as its device's grant and returns the grant it replaces
// (ok), if another.
func (is *issued) set(g Grant) (old Grant, ok bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	old, had := is.byDevice[g.DeviceID]
	if !had && len(is.byDevice) >= maxIssued {
		return Grant{}, false
	}
	is.byDevice[g.DeviceID] = g
	return old, had && old != g
}

// add remembers g as its device's grant unless the device has one.
func (is *issued) add(g Grant) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if _, had := is.byDevice[g.DeviceID]; !had && len(is.byDevice) < maxIssued {
		is.byDevice[g.DeviceID] = g
	}
}

// take forgets and returns device deviceID's grant if it is of task taskID,
// attempt attempt.
func (is *issued) take(taskID, deviceID string, attempt uint32) (Grant, bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	g, ok := is.byDevice[deviceID]
	if !ok || g.TaskID != taskID || g.Attempt != attempt {
		return Grant{}, false
	}
	delete(is.byDevice, deviceID)
	return g, true
}

// drop forgets g if it is its device's grant.
func (is *issued) drop(g Grant) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.byDevice[g.DeviceID] == g {
		delete(is.byDevice, g.DeviceID)
	}
}

// len returns the number of grants remembered.
func (is *issued) len() int {
	is.mu.Lock()
	defer is.mu.Unlock()
	return len(is.byDevice)
}

// deleteHandle deletes the record of g's handle, logging a failure: a
// record left behind is swept later.
func (s *Server) deleteHandle(ctx context.Context, g Grant, why string) {
	if err := s.handles.DeleteSession(ctx, handleSessions, s.signer.handle(g)); err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "download: deleting a handle's record", slog.String("why", why),
			slog.String("task", g.TaskID), slog.String("device", g.DeviceID), slog.Any("attempt", g.Attempt), slog.String("error", err.Error()))
	}
}

// revoked reports whether err, Authorize's answer, says its grant never
// holds again.
func revoked(err error) bool { return errors.Is(err, transport.ErrDownloadRevoked) }

// SweepHandles deletes the records of the handles (Config.Handles) whose
// grant Authorize refuses for good (an error wrapping
// transport.ErrDownloadRevoked), or that do not verify, and remembers the
// grants it allows so that Revoke deletes their records at the end of
// their attempt. Call it once the engine answers Authorize (after its
// recovery), in the background: it asks Authorize once per record, one at
// a time, for at most MaxSweep records. A record whose grant Authorize
// cannot judge (another error) is left. It returns the records visited
// and deleted. Without Config.Handles or Config.Authorize it does nothing.
func (s *Server) SweepHandles(ctx context.Context) (visited, deleted int, err error) {
	if s.handles == nil || s.authorize == nil {
		return 0, 0, nil
	}
	type record struct {
		h string
		v []byte
	}
	var recs []record
	errEnough := errors.New("enough")
	err = s.handles.ListSessions(ctx, handleSessions, func(h string, v []byte) error {
		if len(recs) >= MaxSweep {
			return errEnough
		}
		recs = append(recs, record{h, v})
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return 0, 0, fmt.Errorf("download: listing the handles: %w", err)
	}
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			return visited, deleted, err
		}
		visited++
		g, ok := decodeGrant(r.v)
		if !ok || s.signer.handle(g) != r.h {
			if err := s.handles.DeleteSession(ctx, handleSessions, r.h); err == nil {
				deleted++
			}
			continue
		}
		switch err := s.authorize(ctx, g); {
		case err == nil:
			// A grant Handle remembered meanwhile is newer knowledge:
			// it stays.
			s.issued.add(g)
		case revoked(err):
			if err := s.handles.DeleteSession(ctx, handleSessions, r.h); err == nil {
				deleted++
			}
		}
	}
	return visited, deleted, nil
}
