package download

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"time"

	"github.com/otafleet/otafleet/transport"
)

// Grant names what a token allows: one attempt of one device's sub-task
// downloading one package. It is the seam's transport.DownloadGrant, so that
// the engine's AuthorizeDownload and DownloadServed serve as Config.Authorize
// and Config.OnServed.
type Grant = transport.DownloadGrant

// tokenVersion is the first byte of every payload: the layout of the package
// doc. A new layout takes a new version.
const tokenVersion = 1

// Reasons a token is refused. They name the reason in logs and are never sent
// to the client, which only sees error="invalid_token".
var (
	errMalformed    = errors.New("download: malformed token")
	errBadSignature = errors.New("download: token signature does not verify")
	errExpired      = errors.New("download: token expired")
)

// maxTokenLen bounds the tokens parseToken looks at, so that a huge header
// costs nothing to refuse. A token for IDs of up to persistence.MaxIDLen
// (128) bytes is about 600 characters.
const maxTokenLen = 4096

// b64 is the token's base64 alphabet: URL-safe, unpadded, and strict (the
// unused bits of the last character must be zero), so that every payload
// has exactly one text form.
var b64 = base64.RawURLEncoding.Strict()

// fixedLen is the length of the payload before its three strings: the
// version, the expiry and the attempt.
const fixedLen = 1 + 8 + 4 + 4

// encodePayload lays out g and exp as the package doc describes.
func encodePayload(g Grant, exp time.Time) []byte {
	b := make([]byte, 1+8+4, fixedLen+3*binary.MaxVarintLen64+len(g.TaskID)+len(g.DeviceID)+len(g.PackageID))
	b[0] = tokenVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(exp.Unix()))
	binary.BigEndian.PutUint32(b[9:13], uint32(exp.Nanosecond()))
	return appendGrant(b, g)
}

// appendGrant appends g's part of a payload: the attempt and the three IDs.
func appendGrant(b []byte, g Grant) []byte {
	b = binary.BigEndian.AppendUint32(b, g.Attempt)
	for _, s := range []string{g.TaskID, g.DeviceID, g.PackageID} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// decodePayload is the inverse of encodePayload. It accepts only canonical
// payloads: those that encodePayload returns for the decoded values.
func decodePayload(b []byte) (Grant, time.Time, error) {
	if len(b) < fixedLen || b[0] != tokenVersion {
		return Grant{}, time.Time{}, errMalformed
	}
	sec := int64(binary.BigEndian.Uint64(b[1:9]))
	nsec := binary.BigEndian.Uint32(b[9:13])
	if nsec >= 1e9 {
		return Grant{}, time.Time{}, errMalformed
	}
	g, ok := decodeGrant(b[1+8+4:])
	exp := time.Unix(sec, int64(nsec)).UTC()
	// Trailing bytes and non-minimal varints decode but do not re-encode to
	// the same bytes: refusing them keeps one payload per grant.
	if !ok || string(encodePayload(g, exp)) != string(b) {
		return Grant{}, time.Time{}, errMalformed
	}
	return g, exp, nil
}

// decodeGrant decodes what appendGrant appended, and nothing more; the
// caller checks that the bytes are canonical.
func decodeGrant(b []byte) (Grant, bool) {
	if len(b) < 4 {
		return Grant{}, false
	}
	g := Grant{Attempt: binary.BigEndian.Uint32(b[:4])}
	rest := b[4:]
	for _, s := range []*string{&g.TaskID, &g.DeviceID, &g.PackageID} {
		n, w := binary.Uvarint(rest)
		if w <= 0 || n > uint64(len(rest)-w) {
			return Grant{}, false
		}
		rest = rest[w:]
		*s = string(rest[:n])
		rest = rest[n:]
	}
	return g, len(rest) == 0
}

// signer computes the tokens' MACs with one key.
type signer struct{ key []byte }

func (s signer) mac(payload []byte) []byte {
	h := hmac.New(sha256.New, s.key)
	h.Write(payload)
	return h.Sum(nil)
}

// token signs and encodes a payload.
func (s signer) token(payload []byte) string {
	return b64.EncodeToString(payload) + "." + b64.EncodeToString(s.mac(payload))
}

// mint returns the token for g expiring at exp.
func (s signer) mint(g Grant, exp time.Time) string {
	return s.token(encodePayload(g, exp))
}

// parse checks tok's form and signature and decodes it. It does not check
// the expiry (see verify).
func (s signer) parse(tok string) (Grant, time.Time, error) {
	if len(tok) > maxTokenLen {
		return Grant{}, time.Time{}, errMalformed
	}
	p64, m64, ok := strings.Cut(tok, ".")
	if !ok || p64 == "" || len(m64) != b64.EncodedLen(sha256.Size) {
		return Grant{}, time.Time{}, errMalformed
	}
	payload, err := b64.DecodeString(p64)
	if err != nil {
		return Grant{}, time.Time{}, errMalformed
	}
	mac, err := b64.DecodeString(m64)
	if err != nil {
		return Grant{}, time.Time{}, errMalformed
	}
	// The MAC is checked before the payload is decoded: nothing but the
	// server's own payloads is ever interpreted.
	if !hmac.Equal(mac, s.mac(payload)) {
		return Grant{}, time.Time{}, errBadSignature
	}
	return decodePayload(payload)
}

// handleVersion is the first byte of the MAC input of a handle: a grant
// without an expiry, which no token payload (tokenVersion) can be taken for.
const handleVersion = 2

// handleMACLen is the length of a handle's MAC, truncated (128 bits).
const handleMACLen = 16

// handleLen is the length of a handle: its MAC in base64url.
var handleLen = b64.EncodedLen(handleMACLen)

// handle returns g's handle: the truncated MAC of g, in base64url.
func (s signer) handle(g Grant) string {
	return b64.EncodeToString(s.mac(appendGrant([]byte{handleVersion}, g))[:handleMACLen])
}

// isHandle tells a handle from a token, which is longer and has a '.'.
func isHandle(tok string) bool {
	return len(tok) == handleLen && !strings.Contains(tok, ".")
}

// verify is parse plus the expiry check: a token is valid strictly before its
// expiry.
func (s signer) verify(tok string, now time.Time) (Grant, time.Time, error) {
	g, exp, err := s.parse(tok)
	if err != nil {
		return Grant{}, time.Time{}, err
	}
	if !now.Before(exp) {
		return g, exp, errExpired
	}
	return g, exp, nil
}

// bearerToken extracts the token of an "Authorization: Bearer <token>" header
// (RFC 6750 2.1; the scheme is case-insensitive). present is false when the
// request carries no bearer credentials at all (no Authorization header or
// another scheme), which RFC 6750 3.1 answers without an error code. A
// present but unusable header (empty token, several Authorization headers)
// returns errMalformed.
func bearerToken(values []string) (tok string, present bool, err error) {
	switch len(values) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", true, errMalformed
	}
	v := strings.Trim(values[0], " \t")
	scheme, rest := v, ""
	if i := strings.IndexAny(v, " \t"); i >= 0 {
		scheme, rest = v[:i], v[i:]
	}
	if !strings.EqualFold(scheme, "Bearer") {
		return "", false, nil
	}
	tok = strings.TrimLeft(rest, " \t")
	if tok == "" || strings.ContainsAny(tok, " \t") {
		return "", true, errMalformed
	}
	return tok, true, nil
}
