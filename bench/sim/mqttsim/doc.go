// Package mqttsim simulates an IoTDA-style MQTT device (spec section 2), the
// device side of transport/mqtt/iotda: it connects with the IoTDA identity
// (client ID {device_id}_0_1_{YYYYMMDDHH}, username = device ID, HMAC
// password), answers version_query with a version_report, and carries out
// firmware_upgrade and software_upgrade events: it downloads the package over
// HTTP(S) with the event's bearer token, resuming with a Range request after a
// broken download, verifies its size and SHA-256, "installs" it by taking on
// its version, and reports progress and the result with
// upgrade_progress_report.
//
// A [Behaviour] makes the device misbehave on purpose: fail with a given
// result_code, drop its connections mid-download, corrupt the package, never
// answer, or skip the intermediate progress reports. Integration tests use it
// against an MQTT broker, and so does `otafleet sim` to run many devices.
//
// The device relies on the broker's implicit subscription to its down topic,
// as IoTDA devices do (Project decision 7), unless [Config].Subscribe asks it
// to subscribe itself. Messages on any topic reach its handler, so a push
// from an implicit subscription is delivered.
//
// # Think time, bandwidth and local address
//
// Behaviour.ThinkTime makes the device think, on its clock, after an upgrade
// event before it acts on it (reports progress 0 and downloads); a failure
// at once and the busy answer are not delayed. Behaviour.BytesPerSecond
// caps the download rate: after each read of the HTTP body, while the bytes
// read since the request started are ahead of start + bytes/BytesPerSecond
// on the device's clock, the device waits before it reads on (or completes
// the download). Stop ends any of these waits.
//
// Config.LocalAddr binds the device's connections to a local IP address
// (the port being the system's choice): the broker connection, and the
// downloads unless Config.HTTPClient is given (a given client is used as
// is). A simulator spreads many devices over several loopback addresses so,
// a local address having only so many ports.
//
// # Events
//
// Config.OnEvent, if set, is told of each step of an upgrade as an [Event]:
// EventCommand (an upgrade event), EventDownloadStart, EventDownloadDone,
// EventInstalled, EventFailed (a non-zero result_code, in Code) and
// EventReported (the final report acknowledged by the broker, its
// result_code in Code), so that a load simulator can measure without
// polling its devices. A successful upgrade gives command, download-start,
// download-done, installed, reported; a failure ends with failed and
// reported, with the same code. The calls come one at a time, in order,
// never under a lock of the device; the callback must not block.
// Config.OnUpgrade is still called after each version installed.
//
// Time (event_time, the client ID's timestamp, the reconnect delay, the
// think time and the bandwidth pacing) comes from a [clock.Clock]; the
// package never reads the wall clock itself.
package mqttsim
