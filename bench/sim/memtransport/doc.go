// Package memtransport is the in-memory transport: scripted devices that
// answer the engine's downlinks in their own protocol (MQTT, LwM2M FOTA over
// object 5, LwM2M SOTA over PCP on object 19) and deliver their uplinks to a
// transport.Uplinks. It drives the engine's tests and the demo mode
// `otafleet serve --simulate`.
//
// # Time and concurrency
//
// Every reaction of a device is scheduled with the injected clock's
// AfterFunc (no goroutine sleeps); with internal/clock/clocktest the delays
// of Config.Delays cost nothing and Advance runs the reactions, deliveries
// included, before it returns. Send and RevokeToken never block on a device:
// they schedule the downlink's arrival Delays.Network later and return. A
// Transport is safe for concurrent use. One device's uplinks are delivered in
// order, one at a time; different devices deliver concurrently under the
// real clock. Deliver runs on the timer's goroutine (inside Advance with the
// fake clock): it should hand the input off and return. It may call Send
// (even for the same device) but must not call Connect, Disconnect, Sleep,
// Wake or advance the fake clock. Connect, Disconnect, Sleep and Wake
// deliver their presence input before they return. SetUplinks hands the
// devices to another engine (one rebuilt after a simulated crash).
//
// A device handles each request when it answers it, Delays.Response after
// its arrival, so requests take effect in arrival order. Downloads take
// Delays.Download (PCP: Delays.Segment per segment), installs Delays.Install.
//
// # Devices
//
// Devices answer truthfully from their own state:
//
//   - Version queries (MQTT version query, read of /3/0/3, PCP 0x13) report
//     the current version; reads of /4/0 report RSRP, SINR and cell ID as
//     configured (nil: not reported); /4/0/8 answers 4.04 without a cell ID.
//   - Observations belong to a session: Connect and a lost connection clear
//     them. An Observe answers at once with the current value, so an engine
//     that restarted and re-observes /5/0/3 and /5/0/5 learns that an update
//     already finished. Object 5 changes are notified only for observed
//     paths. PCP messages travel on /19/0/0 and are lost while it is not
//     observed; observing it again makes the device repeat its pending
//     request (the next 0x15, an unacknowledged 0x16 or 0x18).
//   - FOTA: a write of /5/0/1 is acknowledged (2.04) before any State or
//     Update Result of the new download is notified; State goes 1, then 2
//     (or 0 with the failure code); Execute of /5/0/2 in State 2 is
//     acknowledged, State 3, then State 0 with Update Result 1 and the new
//     version. Writing the same URI again resumes (or re-reports) the
//     download; an empty URI resets object 5, and its answer is marked
//     fota_reset. A device back on a new session resumes its download by
//     itself. Behaviour.StrictURI makes it refuse a URI outside State 0, as
//     real clients do; Behaviour.ForgetURIOnReboot makes it come back Idle.
//   - PCP: 0x14 is answered (0x03 when the version already runs), then the
//     device fetches the segment count of the 0x14 with 0x15 requests, sends
//     0x16, answers 0x17 and sends 0x18 with its new version.
//   - MQTT: an upgrade event gets progress reports (0, 50) and a final one
//     (100 with the new version, or the failure result_code); an event for a
//     version the device already runs is answered at once with progress 100
//     and that version; the same event again (reconnect) continues the
//     download. Revoking the token of a download in progress aborts it.
//   - Queue mode: Sleep and Wake (or DeviceSpec.PSM) script PSM; a downlink
//     that reaches an asleep device is held until it wakes.
//   - Answers to the engine's own requests (reads, an observation's first
//     value, write and execute answers, the PCP answers to 0x13, 0x14 and
//     0x17) are marked no_ack, as the LwM2M transport marks them: nothing is
//     acknowledged to the device on them. Notifications, the device's own
//     PCP requests (0x15, 0x16, 0x18) and MQTT reports are not. A read's
//     answer carries the read's tag (DeviceInput.request_tag), as the LwM2M
//     transport echoes it.
//
// DeviceSpec.Behaviour injects faults: failed downloads with a given code,
// silence, ignored upgrade requests, a connection lost mid-download, refused
// Executes, a wrong version after the update, a reboot after installing.
//
// # Observing and waiting
//
// Device returns a snapshot with per-device Counters (upgrade events, URI
// writes, Executes, PCP 0x17, segments, downloads, completed upgrades, ...)
// and Stats their sums. A test waits without sleeping with Wait(ctx, cond),
// which re-evaluates cond on every change, with the channel of Changed, or
// with the Config.OnUplink and Config.OnUpgrade callbacks. Upgrades counts
// an install when it completes, before its report is delivered; to know
// that the engine saw the result, wait on the engine, or on OnUplink.
//
// # State file
//
// With Config.StateFile, each device's durable facts are appended to the
// file, and synced, before the device acts on them; New reloads them and Add
// applies them, so a simulator restarted after kill -9 remembers which
// devices upgraded and how many Executes each received. An install that was
// accepted but had not completed completes when the device is added. The
// file is text (appends from many devices share fsyncs):
//
//	otafleet-memtransport-state v1
//	<crc> <json record>
//	<crc> <json record>
//	...
//
// The first line is the header. Every other line is one device's whole
// record: 8 lowercase hex digits of the CRC-32C (Castagnoli) of the JSON
// bytes, one space, a JSON object, "\n". The last record of an ID wins.
// Record fields: id, fw, sw, upgrades, executes (/5/0/2), pcp_executes
// (0x17), upgrade_events (MQTT), uri_writes, downloads, drops and refusals
// (consumed Behaviour counts), and when set installing and installing_sw
// (an install in progress), fota_result (object 5's Update Result),
// pcp_result_pending (a 0x18 not acknowledged yet). A last line that is
// incomplete or fails its checksum is a torn write: it is dropped and the
// file truncated before it. A damaged line anywhere else, or a wrong header,
// makes New fail with an error wrapping ErrCorruptState that names the line.
package memtransport
