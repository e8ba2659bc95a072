// Package transport is a fixture seam between the engine and the adapters.
package transport

type Downlinks interface{ Send(deviceID string) error }

type Uplinks interface{ Deliver(deviceID string) error }
