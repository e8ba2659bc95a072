// Package lwm2m is otafleet's LwM2M server over CoAP/UDP: the registration
// interface, device management on the device's own CoAP conversation, the
// firmware package served block-wise on the same endpoint, and PCP
// (software upgrades) carried on object 19. Like every transport it only
// translates: CoAP requests and answers become messages inputs for the
// engine, and the engine's downlinks become CoAP requests. It makes no
// upgrade decisions.
//
// Plain CoAP runs on transport/coapudp: one socket and a few reader
// goroutines for the whole fleet, no connection, goroutine or response
// cache per device, so an idle registered device costs its registration
// record and little else. DTLS runs on go-coap v3 and pion/dtls, a session
// per device (conv.go hides the difference). A reader never waits for the
// journal: a registration is admitted aside (it reads the registry and
// writes Sessions), and what devices report (notifications, updates) is
// delivered in order on a goroutine per registration that exists only
// while deliveries wait; a confirmable notification is acknowledged once
// the engine journaled it.
//
// Registration (OMA LwM2M 1.1 core, section 6.2):
//
//	POST   /rd?ep={device}&lt={s}&lwm2m={1.0|1.1|1.2}&b={U|UQ}  </1/0>,</3/0>,...  → 2.01 Location-Path rd/{id}
//	POST   /rd/{id}[?lt=&b=]                                                     → 2.04 (update)
//	DELETE /rd/{id}                                                              → 2.02 (de-register)
//
// A registration is delivered as Connected, an update as an Uplink marked
// registration_update (as Connected when it changes the binding), a
// de-registration as Disconnected.
//
// An endpoint that is not a registered device of an LwM2M product gets 4.03,
// a malformed request 4.00. A device that registers again (a reboot) is
// answered before its previous registration is dropped: cancelling that
// one's observations waits for the old, likely dead, address. DTLS 1.2
// offers the PSK suites TLS_PSK_WITH_AES_128_CCM_8 and
// TLS_PSK_WITH_AES_128_CBC_SHA256 (spec 3.1) and AES-GCM; a failed
// handshake (a wrong PSK, an unknown identity) is logged with the identity
// and the address, at most ten lines a minute (dtls.go). Over DTLS the endpoint is the PSK identity; a
// device with a PSK, or of a product in security mode PSK, registers over
// DTLS only. A registration made over DTLS is updated, de-registered and
// downloaded from only over DTLS by the same identity, one made over plain
// CoAP only over plain CoAP (4.03 otherwise). A body that does not fit one
// datagram comes in Block1 blocks (RFC 7959), reassembled within bounds
// (block1.go): at most 16 KiB (4.13), a body per peer, 512 in flight. A registration that outlives its lifetime without an update is gone:
// the device is offline. In queue mode (b=UQ) the device is reachable for
// QueueAwake after each message it sends.
//
// Downlinks: reads (single resources ask text/plain first, spec project
// decision 7), observations, writes (the package URI on /5/0/1), executes,
// and PCP frames written to /19/1/0. Answers become the inputs the device
// machine expects: a read of /3/0/3 a VersionReported, of /4/0 or /4/0/8 a
// RadioReported, of /5/0/3 and /5/0/5 a FotaStatus; anything else, and every
// failure, an Lwm2mResponse with the CoAP code (the answer of an empty write
// of /5/0/1, the reset of object 5, marked fota_reset). Notifications of /19/0/0
// carry PCP frames from the device; after a restart, those a registered
// device still sends on the observation of the process before it are
// delivered too, until /19/0/0 is observed again (a PCP frame is found on
// no other resource, spec 4.7).
//
// Requests to devices carry Message IDs the server picks; a device that
// answers one from its duplicate cache (a Message ID the process before a
// restart used, still in the device's EXCHANGE_LIFETIME) gets it again with
// another (exchange.go).
//
// Packages: the Package URI written to /5/0/1 is coap:// (Config.PublicAddr)
// for a device registered over plain CoAP and coaps:// (Config.DTLSPublicAddr)
// for one registered over DTLS, "/fw/{package_id}/t={handle}" with the
// attempt's download handle (download.Server.Handle: 22 characters, the
// same on every write of the attempt, so the URI stays within /5/0/1's 255
// characters whatever the device ID); once written, the URI and its handle
// go to the engine as a DownloadOffered, for the device's timeline.
// GET /fw/{package_id}/t={token} (or with the token in a Uri-Query t, or in
// the last Uri-Path option as "{package_id}?t={token}", where a LiteOS agent
// puts a URI's query: PackageRequest) answers one Block2 block at a time
// from the package's image in memory (Config.Images: a slice, no copy and
// no store read per request; the block size the client asks for up to 1024
// bytes, SZX 7 included, 512 without Block2, an ETag per package), so any
// block can be asked first and a device resumes where it stopped. PCP
// segments are slices of the same images. The bytes reported served (the
// timeline's notes) are those of the blocks answered, in runs of
// contiguous blocks. The token check and the package reader are the
// download server's (transport/download: Check, Images), as over HTTP: a
// token is bound to the device's running attempt and refused once it ended
// (with the server keeping grants, from the block after the engine's
// revocation), and a file that differs in size or SHA-256 from its package
// record is never served.
package lwm2m
