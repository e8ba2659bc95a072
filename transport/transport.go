// Package transport is the seam between the engine and the device protocols.
// The engine sends downlinks and token revocations through a Downlinks value;
// protocol adapters (MQTT, LwM2M, the in-memory simulator) implement it and
// hand decoded uplinks to an Uplinks value (the engine). The package
// download servers name a job's download by a DownloadGrant, which the
// engine authorizes and is told the bytes served under. Adapters make no
// decisions: they translate bytes to messages and back.
package transport

import (
	"context"

	"github.com/otafleet/otafleet/messages"
)

// Downlinks is what the engine needs from an adapter. Implementations must be
// safe for concurrent use and must not block for long: an actor calls them
// after journaling its step. Delivery is best effort; a lost downlink is
// covered by the step's deadline and retries, so Send reports only errors
// worth logging (no route to the device, adapter closed).
type Downlinks interface {
	// Send delivers dl to the device dl.DeviceId in its own protocol.
	Send(ctx context.Context, dl *messages.Downlink) error
	// RevokeToken invalidates the download token of a job (spec 6.5).
	RevokeToken(ctx context.Context, r *messages.RevokeToken) error
}

// Uplinks is what an adapter needs from the engine: it delivers every decoded
// uplink (presence and reports) for one device, and the download location it
// gave the device (DownloadOffered: the URI or URL and its token, for the
// timeline). The engine stamps the time.
type Uplinks interface {
	Deliver(ctx context.Context, deviceID string, in *messages.DeviceInput) error
}
