// Package lwm2msim simulates an IoTDA-style LwM2M device (spec sections 3
// and 4), the device side of transport/lwm2m: a go-coap v3 client over UDP
// that registers with the LwM2M server, keeps its registration up to date,
// answers the server's reads, observes, writes and executes, upgrades its
// firmware through object 5 (FOTA, Block2 download of the Package URI) and
// its software through object 19 (SOTA over PCP), and de-registers on Stop.
//
// # Registration
//
// Start dials the server (one UDP socket per device, as real devices have
// their own address) and sends
//
//	POST /rd?ep={endpoint}&lt={lifetime}&lwm2m=1.1&b=U|UQ
//	</>;ct=11543;rt="oma.lwm2m",</1/0>,</3/0>,</4/0>,</5/0>[,</19/0>,</19/1>]
//
// It expects 2.01 Created with a Location-Path (rd/{id}); any other answer
// is a *StatusError returned by Start. The device then sends a registration
// update (POST /rd/{id}, empty) every lifetime/2 of its clock, re-registers
// when an update is answered 4.04, and Stop sends DELETE /rd/{id}.
//
// # Serving the server's requests
//
// The go-coap client connection serves incoming requests (options.WithMux),
// so the server talks to the device on the same UDP conversation:
//
//   - Read (GET) of /1/0, /3/0, /4/0, /5/0, /19/0, /19/1 and their
//     resources: /3/0/3 firmware version, /3/0/19 software version; /4/0/2
//     RSRP, /4/0/8 cell ID and /4/0/11 SINR (each omitted when unset);
//     /5/0/1 Package URI, /5/0/3 State, /5/0/5 Update Result. The Accept
//     option picks the content format (text/plain, opaque, TLV, SenML JSON,
//     SenML CBOR, LwM2M JSON); without one a resource is answered in
//     text/plain (opaque resources in application/octet-stream) and an
//     instance or object in Config.RadioFormat (TLV by default). An
//     unsupported Accept is answered 4.06, an unknown path 4.04, a read of
//     an executable resource 4.05.
//   - Observe (GET with Observe 0) of any readable path: the first answer is
//     the current value, then a notification (CON, or NON with
//     Config.NotifyNON) follows every change, with an increasing Observe
//     sequence. GET with Observe 1 cancels. /19/0/0 reads as empty; its
//     notifications carry the PCP frames the device sends (see below). A
//     CON notification is retransmitted by go-coap and, while it stays
//     unacknowledged, sent again as a new message with the same Observe
//     value, after pauses that double, for Config.NotifyTimeout (93 s,
//     MAX_TRANSMIT_WAIT); then the observation ends (RFC 7641 4.5), which
//     Stats.Unacknowledged counts.
//   - Write (PUT) of /5/0/1 (text/plain, or any format lwm2mcodec decodes)
//     and of /19/1/0 (PCP frames from the platform); other existing paths
//     4.05. A payload that does not decode is answered 4.00, an unknown
//     content format 4.15.
//   - Execute (POST) of /5/0/2, allowed in State 2 (Downloaded) only, else
//     4.05.
//
// Malformed input never makes the device panic: it answers with an LwM2M
// error code, and a handler that failed anyway answers 5.00.
//
// # Firmware update (object 5)
//
// Writing a coap:// URI (coaps:// for a device on DTLS; the other scheme is
// refused with Update Result 9) to /5/0/1 moves State 0 → 1 and starts the
// download: the device sends GETs for the URI's path (and query) over its
// registered session, as Huawei's LiteOS client does (spec 3.7), one block at a time
// with an explicit Block2 option (NUM, M=0, SZX of Config.BlockSize, 1024
// bytes by default), continuing with the block size the server answered. It
// counts the blocks, checks the ETag (a different ETag restarts the download
// from block 0) and the total size against Size2, and computes the SHA-256
// (LwM2M FOTA carries no hash). When all bytes are in, State becomes 2. The
// same URI written again while downloading continues the download (with
// Behaviour.StrictURI, as real clients do, any URI outside State 0 is
// refused with 4.00); after a device restart the download resumes by itself
// at the next block it needs. An empty
// URI resets object 5 (State 0, Update Result 0). Execute moves State 2 → 3
// before the device answers it (a read of /5/0 never shows State 2 with
// Update Result 0 once it took an Execute); after Behaviour.UpdateDelay
// the device takes on the package's version (Config.NewVersion of the
// package ID of the URI's path, read as the server reads it,
// lwm2m.PackageRequest), Update Result becomes 1 and State 0. With
// Behaviour.RebootOnUpdate it goes silent instead,
// re-registers after Behaviour.RestartDelay and shows the result to the
// reads and observations the server makes after the new registration.
//
// # Software update (PCP over object 19)
//
// With Config.ObjectsPCP, frames written to /19/1/0 are decoded with package
// pcp and answered by notifications of /19/0/0 (spec 4.5): 0x13 with the
// software version; 0x14 with a 0x14 response and then 0x15 segment requests,
// one after the other from segment 0 (a repeated 0x14 with the same version
// and check code continues at the next missing segment, any other starts
// over); once every segment arrived, 0x16 with the download result
// (Config.VerifyCheckCode compares the check code with pcp.CheckCode of the
// package's SHA-256); 0x17 with a 0x17 response (until it has installed,
// the device answers a 0x13 with its old version and refuses a 0x14 as
// busy, so nothing tells a lost 0x17 from one it took) and, after
// UpdateDelay, 0x18
// with the result and the new version, repeated on each new observation of
// /19/0/0 until the platform acknowledges it. An unanswered 0x15 is sent
// again after Config.SegmentTimeout, three times at most, then the download
// ends with 0x16 status 0x06.
//
// # Queue mode
//
// With Behaviour.QueueMode the device registers with binding UQ and answers
// requests only during the awake window (Behaviour.AwakeWindow, 10 s by
// default) that follows each message it sends: registration, update,
// notification or download request. Requests that arrive outside it are
// dropped unanswered (not even acknowledged), as a sleeping NB-IoT device
// would; Wake sends a registration update at once.
//
// # Misbehaviour
//
// A [Behaviour] makes the device fail an update with a given Update Result,
// answer a PCP step with a failure code, restart in the middle of its first
// download, reboot to install, or answer nothing at all.
//
// # Think time and bandwidth
//
// Behaviour.ThinkTime makes the device think before it acts on an upgrade
// command, on its clock: after it answered the Package URI write, before its
// first block request; after it answered Execute, before installing (on top
// of UpdateDelay); after it answered a 0x14, before its first 0x15 segment
// request; after it answered a 0x17, before installing (on top of
// UpdateDelay). The answers themselves (2.04, the PCP responses) are never
// delayed: the server times them out.
//
// Behaviour.BytesPerSecond caps the download rate: after each block or
// segment, while the bytes received since the download started (or resumed
// after a restart) are ahead of start + bytes/BytesPerSecond on the device's
// clock, the device waits before its next request (or, after the last,
// before it completes the download: State 2, or the 0x16). Stop ends any of
// these waits.
//
// # Local address
//
// Config.LocalAddr binds the device's sockets (UDP, or UDP under DTLS; the
// new socket of each restart too) to a local IP address, the port being the
// system's choice, so that a simulator can spread many devices over several
// loopback addresses: a local address has only so many ports.
//
// # Events
//
// Config.OnEvent, if set, is told of each step of an upgrade as an [Event]:
// EventCommand (a Package URI written, a 0x14), EventDownloadStart,
// EventDownloadDone, EventInstalled, EventFailed (a failure code the device
// reported, in Code) and EventReported (the final result made known, in
// Code), so that a load simulator can measure without polling its devices.
// A successful FOTA upgrade gives command, download-start, download-done,
// installed, reported (Code 1); a PCP one the same, with Code 0; a failure
// ends with failed and reported, with the same code. The calls come one at a
// time, in order, never under the device's lock; the callback must not
// block.
//
// # Time
//
// Every delay of the protocol (update period, awake window, update and
// restart delays, think time, bandwidth pacing, PCP segment retries) runs
// on Config.Clock, a [clock.Clock], so tests drive them with a fake clock.
// Network time does not: how long a request waits for its answer, or a CON
// notification for its acknowledgement (Config.RequestTimeout,
// Config.NotifyTimeout; 5 s for Stop's de-registration), runs on clock.Real, like go-coap's own
// retransmissions, so that a test moving its fake clock by hours cancels no
// message in flight and a device whose server is gone still stops. The
// package never calls the time package's clock itself.
package lwm2msim
