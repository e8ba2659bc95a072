package download

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

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
//   - by Check, when Authorize refuses for good (an error wrapping
//     transport.ErrDownloadRevoked) a handle's grant, or a token's grant
//     that this server handed a handle out for;
//   - by SweepHandles, at start, for the grants whose attempt ended while
//     the server was down (their revocation never reached it).
//
// The server remembers the grant of each record it handed out or found
// running in its device's entry (grants, with the device's kept
// authorization), which ends with the record (past maxGrants devices, a
// record is not remembered: Check or the next start deletes it).
//
// A handle checked after its record is gone is unknown (ErrInvalidToken,
// 4.01), and the same attempt writing its URI again gets the same handle
// (it is the grant's MAC) and a new record.

// MaxSweep bounds the records SweepHandles visits per call: the records
// alive are about one per LwM2M attempt under way; more (those of a store
// written before records were deleted) are swept over several starts, and
// by Check as their devices ask.
const MaxSweep = 1 << 16

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
			s.grants.found(g)
		case revoked(err):
			s.grants.drop(g)
			if err := s.handles.DeleteSession(ctx, handleSessions, r.h); err == nil {
				deleted++
			}
		}
	}
	return visited, deleted, nil
}
