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
// Time (event_time, the client ID's timestamp, the reconnect delay) comes
// from a [clock.Clock]; the package never reads the wall clock itself.
package mqttsim
