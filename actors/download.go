package actors

import (
	"context"
	"fmt"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport"
)

// ErrDownloadRevoked is AuthorizeDownload's answer to a grant that is not the
// device's running job: its upgrade ended, was stopped, or was retried. It
// is transport.ErrDownloadRevoked, on which a download server forgets the
// grant (and the handle record that names it).
var ErrDownloadRevoked = transport.ErrDownloadRevoked

// AuthorizeDownload is the download servers' revocation check (spec 6.5),
// asked on every request with a valid, unexpired token: it returns nil while
// g's (task, attempt) is device g.DeviceID's running job, and an error
// wrapping ErrDownloadRevoked once it is not (no job, or the job of another
// task or attempt). A device that was never registered runs no job. Other
// errors are the query's: an invalid device ID, the engine stopping, ctx
// ending. It reads the device actor's state (activating it if passivated)
// and changes nothing.
func (e *Engine) AuthorizeDownload(ctx context.Context, g transport.DownloadGrant) error {
	v, err := e.Device(ctx, g.DeviceID)
	if err != nil {
		return err
	}
	switch j := v.State.Job; {
	case j == nil:
		return fmt.Errorf("%w: device %q runs no job (the token is for task %q attempt %d)", ErrDownloadRevoked, g.DeviceID, g.TaskID, g.Attempt)
	case j.GetTaskId() != g.TaskID || j.GetAttempt() != g.Attempt:
		return fmt.Errorf("%w: device %q runs task %q attempt %d (the token is for task %q attempt %d)",
			ErrDownloadRevoked, g.DeviceID, j.GetTaskId(), j.GetAttempt(), g.TaskID, g.Attempt)
	}
	return nil
}

// DownloadServed tells device g.DeviceID that a download server sent bytes
// [offset, offset+n) of a size-byte package under g
// (messages.DownloadServed): a note on the timeline of the job g names, which
// the device ignores when g is no longer its running job. Like every
// DownloadServed, it is queued in the actor's mailbox and not waited for; a
// note that cannot be queued (an invalid device ID, the engine stopped) is
// logged and dropped, since it only annotates the timeline.
func (e *Engine) DownloadServed(g transport.DownloadGrant, offset, n, size int64) {
	err := e.Deliver(context.Background(), g.DeviceID, &messages.DeviceInput{Kind: &messages.DeviceInput_DownloadServed{DownloadServed: &messages.DownloadServed{
		TaskId: g.TaskID, Attempt: g.Attempt, Offset: offset, Bytes: n, Size: size,
	}}})
	if err != nil {
		e.log.Warn("download: reporting bytes served", "device", g.DeviceID, "error", err)
	}
}
