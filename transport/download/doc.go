// Package download serves upgrade packages to MQTT devices over HTTPS (or
// plain HTTP) with resumable downloads (spec 2.7 and 6.4, project decision 5).
//
// A device receives, in its firmware_upgrade or software_upgrade event, the URL
// of a package (Path) and an access token that it sends back as
// "Authorization: Bearer <token>". A token is minted per sub-task attempt
// (Server.Mint) and names a Grant: one attempt of one device's sub-task
// downloading one package. Tokens are stateless and signed with HMAC-SHA256:
//
//	token   = base64url(payload) "." base64url(HMAC-SHA256(key, payload))
//	payload = version (1 byte, 1)
//	          expiry seconds since the Unix epoch (8 bytes, big-endian, signed)
//	          expiry nanoseconds (4 bytes, big-endian, < 1e9)
//	          attempt (4 bytes, big-endian)
//	          task ID, device ID, package ID (each a uvarint length and the bytes)
//
// (base64url without padding). A server that restarts with the same key
// accepts the tokens it minted before. The encoding is canonical: a token is
// accepted only if it is exactly what Mint would produce for its grant and
// expiry. A token expires after Config.TTL (24 h by default, as the spec's
// "expires": 86400); revocation before that, when the sub-task reached a final
// result or was stopped (spec 6.5), is the job of Config.Authorize, asked on
// every request, or with Config.KeepGrants on the first request of a grant
// only, until Server.Revoke names its device (the engine's RevokeToken, at
// the end of the job): a CoAP download of a thousand blocks asks once.
//
// Package files are served from Images: each package's file is read from
// the store once, checked against its record, and kept in memory as an
// immutable image that every download reads without copying, within a
// bound in bytes (least recently used images no download reads are
// evicted; a package that does not fit is read from the store per
// request).
//
// The Handler answers GET and HEAD on /packages/{package_id} through
// http.ServeContent over the package's image (or its blob), so ranges ("Range:
// bytes=N-", 206 Partial Content), If-Range, conditional requests and HEAD
// follow RFC 9110. Each answer carries Content-Length, a strong ETag (the
// package's SHA-256 in hex), Last-Modified (the package's creation time) and
// "Content-Disposition: attachment; filename=..." (project decision 7: devices
// take the file name from it; the name is bare when it is an RFC 7230 token,
// quoted otherwise).
//
// Refusals, in the order they are checked: a path other than
// /packages/{package_id} is 404; a method other than GET and HEAD is 405; a
// missing, malformed, forged or expired token is 401 with a WWW-Authenticate
// challenge; a token for another package is 403; a grant that Authorize
// refuses is 403; an unknown package is 404; a package whose file differs
// in size or SHA-256 from its record is 500. Each refusal is logged with its
// reason, never with the token.
//
// An LwM2M device gets a handle instead (Server.Handle, spec 3.7 and project
// decision 5): a Package URI holds 255 characters, a LiteOS agent resumes a
// download only when the URI written again is the same text, and Debian's
// coap-client sends at most 100 bytes of path. A handle is 22 characters,
// the MAC of the grant under the same key (HMAC-SHA256 truncated to 128
// bits, base64url), and the grant is kept in Config.Handles (the store)
// under it: the same grant has the same handle after a restart, any server
// with the key and the store checks it, and it has no expiry (it holds
// while Authorize holds its grant).
//
// The rules are written once, for every path a package takes: Check is the
// token check (a token's signature and expiry or a handle's grant, then
// package and Authorize) and Images (over OpenPackage, the verified opener:
// record, file, size and SHA-256) the package reader. The Handler uses
// both, and so does the LwM2M server (transport/lwm2m), which serves the
// same packages block-wise over CoAP (Block2) with the handle in its URI,
// and in PCP segments.
//
// A Server is safe for concurrent use. It judges token expiry by its
// clock.Clock (Config.Clock), never by the time package's wall clock.
package download
