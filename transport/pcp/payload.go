package pcp

import (
	"encoding/binary"

	"github.com/otafleet/otafleet/messages"
)

// Payload lengths of spec 4.5; a version field is messages.PcpVersionLen
// bytes, ASCII right-padded with 0x00.
const (
	versionResponseLen  = 1 + messages.PcpVersionLen         // result, version
	notifyLen           = messages.PcpVersionLen + 2 + 2 + 2 // version, segment size, count, check code
	segmentRequestLen   = messages.PcpVersionLen + 2         // version, segment number
	segmentHeaderLen    = 1 + 2                              // result, segment number
	upgradeResultLen    = 1 + messages.PcpVersionLen         // result, version
	resultOnlyLen       = 1                                  // result or status
	maxSegmentDataBytes = MaxDataLen - segmentHeaderLen
)

// Message is the typed payload of one PCP frame. Each code has two, one per
// direction; the types of this package are the only implementations.
type Message interface {
	// Code is the message code of the frame that carries the message.
	Code() messages.PcpCode
	// data returns the frame's data, or an error wrapping ErrMalformed.
	data() ([]byte, error)
}

// Platform → device (downlink, written to /19/1/0).

// QueryVersion is the 0x13 request: no data.
type QueryVersion struct{}

// NotifyNewVersion is the 0x14 request, 22 bytes: the target version, the
// segment size in bytes, the number of segments and the check code
// (spec 4.5, 4.8).
type NotifyNewVersion struct {
	Version      string
	SegmentSize  uint16
	SegmentCount uint16
	CheckCode    uint16
}

// SegmentResponse is the 0x15 response: result, segment number and, when
// Result is messages.PcpResultOK, the segment's bytes (3 + n bytes). A refusal carries no
// data; otafleet still sends the segment number.
type SegmentResponse struct {
	Result    byte
	SegmentNo uint16
	Data      []byte
}

// DownloadResultAck is the 0x16 response: messages.PcpResultOK (handled) or
// messages.PcpResultNoSuchTask.
type DownloadResultAck struct{ Result byte }

// ExecuteUpgrade is the 0x17 request: no data.
type ExecuteUpgrade struct{}

// UpgradeResultAck is the 0x18 response: messages.PcpResultOK (handled) or
// messages.PcpResultNoSuchTask.
type UpgradeResultAck struct{ Result byte }

// Device → platform (uplink, notified on /19/0/0).

// VersionResponse is the 0x13 response, 17 bytes: result and the device's
// current version.
type VersionResponse struct {
	Result  byte
	Version string
}

// NotifyResponse is the 0x14 response, 1 byte: messages.PcpResultOK if the device takes
// the upgrade, else why not (spec 4.5). Devices may skip it and request a
// segment at once.
type NotifyResponse struct{ Result byte }

// SegmentRequest is the 0x15 request, 18 bytes: the target version of the
// 0x14 and the segment number, from 0.
type SegmentRequest struct {
	Version   string
	SegmentNo uint16
}

// DownloadResult is the 0x16 request, 1 byte: messages.PcpResultOK (downloaded) or the
// download failure.
type DownloadResult struct{ Status byte }

// ExecuteResponse is the 0x17 response, 1 byte: messages.PcpResultOK if the device
// starts the upgrade, else why not.
type ExecuteResponse struct{ Result byte }

// UpgradeResult is the 0x18 request, 17 bytes: result and the version the
// device now runs.
type UpgradeResult struct {
	Result  byte
	Version string
}

func (QueryVersion) Code() messages.PcpCode      { return messages.PcpCodeQueryVersion }
func (NotifyNewVersion) Code() messages.PcpCode  { return messages.PcpCodeNotifyNewVersion }
func (SegmentResponse) Code() messages.PcpCode   { return messages.PcpCodeRequestSegment }
func (DownloadResultAck) Code() messages.PcpCode { return messages.PcpCodeReportDownloadResult }
func (ExecuteUpgrade) Code() messages.PcpCode    { return messages.PcpCodeExecuteUpgrade }
func (UpgradeResultAck) Code() messages.PcpCode  { return messages.PcpCodeReportUpgradeResult }
func (VersionResponse) Code() messages.PcpCode   { return messages.PcpCodeQueryVersion }
func (NotifyResponse) Code() messages.PcpCode    { return messages.PcpCodeNotifyNewVersion }
func (SegmentRequest) Code() messages.PcpCode    { return messages.PcpCodeRequestSegment }
func (DownloadResult) Code() messages.PcpCode    { return messages.PcpCodeReportDownloadResult }
func (ExecuteResponse) Code() messages.PcpCode   { return messages.PcpCodeExecuteUpgrade }
func (UpgradeResult) Code() messages.PcpCode     { return messages.PcpCodeReportUpgradeResult }

func (QueryVersion) data() ([]byte, error) { return nil, nil }

func (m NotifyNewVersion) data() ([]byte, error) {
	b := make([]byte, notifyLen)
	if err := putVersion(b, m.Code(), "target version", m.Version); err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint16(b[16:], m.SegmentSize)
	binary.BigEndian.PutUint16(b[18:], m.SegmentCount)
	binary.BigEndian.PutUint16(b[20:], m.CheckCode)
	return b, nil
}

func (m SegmentResponse) data() ([]byte, error) {
	switch {
	case m.Result != messages.PcpResultOK && len(m.Data) > 0:
		return nil, malformed("%v response: result 0x%02X with %d data bytes: a refusal carries no data", m.Code(), m.Result, len(m.Data))
	case len(m.Data) > maxSegmentDataBytes:
		return nil, malformed("%v response: segment data of %d bytes, at most %d", m.Code(), len(m.Data), maxSegmentDataBytes)
	}
	b := make([]byte, segmentHeaderLen+len(m.Data))
	b[0] = m.Result
	binary.BigEndian.PutUint16(b[1:], m.SegmentNo)
	copy(b[segmentHeaderLen:], m.Data)
	return b, nil
}

func (m DownloadResultAck) data() ([]byte, error) { return []byte{m.Result}, nil }
func (ExecuteUpgrade) data() ([]byte, error)      { return nil, nil }
func (m UpgradeResultAck) data() ([]byte, error)  { return []byte{m.Result}, nil }

func (m VersionResponse) data() ([]byte, error) {
	b := make([]byte, versionResponseLen)
	b[0] = m.Result
	if err := putVersion(b[1:], m.Code(), "current version", m.Version); err != nil {
		return nil, err
	}
	return b, nil
}

func (m NotifyResponse) data() ([]byte, error) { return []byte{m.Result}, nil }

func (m SegmentRequest) data() ([]byte, error) {
	b := make([]byte, segmentRequestLen)
	if err := putVersion(b, m.Code(), "version", m.Version); err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint16(b[16:], m.SegmentNo)
	return b, nil
}

func (m DownloadResult) data() ([]byte, error)  { return []byte{m.Status}, nil }
func (m ExecuteResponse) data() ([]byte, error) { return []byte{m.Result}, nil }

func (m UpgradeResult) data() ([]byte, error) {
	b := make([]byte, upgradeResultLen)
	b[0] = m.Result
	if err := putVersion(b[1:], m.Code(), "current version", m.Version); err != nil {
		return nil, err
	}
	return b, nil
}

// putVersion writes v into the 16-byte field dst, right-padded with 0x00. It
// accepts what getVersion returns: at most messages.PcpVersionLen bytes of ASCII
// without 0x00.
func putVersion(dst []byte, c messages.PcpCode, field, v string) error {
	if len(v) > messages.PcpVersionLen {
		return malformed("%v: %s %q is %d bytes, at most %d", c, field, v, len(v), messages.PcpVersionLen)
	}
	for i := 0; i < len(v); i++ {
		if v[i] == 0 || v[i] >= 0x80 {
			return malformed("%v: %s %q: byte %d is 0x%02X: a version is ASCII without 0x00", c, field, v, i, v[i])
		}
	}
	copy(dst[:messages.PcpVersionLen], v)
	return nil
}

// getVersion reads a 16-byte version field: ASCII text without 0x00, then
// 0x00 padding, which it strips.
func getVersion(src []byte, c messages.PcpCode, field string) (string, error) {
	src = src[:messages.PcpVersionLen]
	n := len(src)
	for n > 0 && src[n-1] == 0 {
		n--
	}
	for i, b := range src[:n] {
		if b == 0 || b >= 0x80 {
			return "", malformed("%v: %s field % X: byte %d is 0x%02X: want ASCII without 0x00, then 0x00 padding", c, field, src, i, b)
		}
	}
	return string(src[:n]), nil
}

// EncodeMessage returns the frame that carries m.
func EncodeMessage(m Message) ([]byte, error) {
	d, err := m.data()
	if err != nil {
		return nil, err
	}
	return encode(m.Code(), d), nil
}

// mustEncode encodes a message whose data cannot fail.
func mustEncode(m Message) []byte {
	b, err := EncodeMessage(m)
	if err != nil {
		panic("pcp: " + err.Error()) // broken invariant: m has no field that can be out of range
	}
	return b
}

// checkFrame checks that f has code want and n data bytes.
func checkFrame(f Frame, want messages.PcpCode, what string, n int) error {
	switch {
	case f.Code != want:
		return malformed("frame of code %v, want %v %s", f.Code, want, what)
	case len(f.Data) != n:
		return malformed("%v %s: %d data bytes, want %d", want, what, len(f.Data), n)
	}
	return nil
}

// ---- Platform side: encode downlinks, decode uplinks ----

// EncodeQueryVersion returns the 0x13 request (FFFE01134C9A0000).
func EncodeQueryVersion() []byte { return mustEncode(QueryVersion{}) }

// EncodeNotify returns the 0x14 request. It fails if the version is longer
// than 16 bytes, or is not ASCII or holds 0x00.
func EncodeNotify(m NotifyNewVersion) ([]byte, error) { return EncodeMessage(m) }

// EncodeSegmentResponse returns the 0x15 response. It fails if a refusal
// (Result other than messages.PcpResultOK) carries data, or if the data exceeds 65532
// bytes.
func EncodeSegmentResponse(m SegmentResponse) ([]byte, error) { return EncodeMessage(m) }

// EncodeDownloadResultAck returns the 0x16 response.
func EncodeDownloadResultAck(m DownloadResultAck) []byte { return mustEncode(m) }

// EncodeExecute returns the 0x17 request (FFFE0117CF900000).
func EncodeExecute() []byte { return mustEncode(ExecuteUpgrade{}) }

// EncodeUpgradeResultAck returns the 0x18 response.
func EncodeUpgradeResultAck(m UpgradeResultAck) []byte { return mustEncode(m) }

// DecodeVersionResponse reads a device's 0x13 response (17 bytes).
func DecodeVersionResponse(f Frame) (VersionResponse, error) {
	if err := checkFrame(f, messages.PcpCodeQueryVersion, "response", versionResponseLen); err != nil {
		return VersionResponse{}, err
	}
	v, err := getVersion(f.Data[1:], f.Code, "current version")
	if err != nil {
		return VersionResponse{}, err
	}
	return VersionResponse{Result: f.Data[0], Version: v}, nil
}

// DecodeNotifyResponse reads a device's 0x14 response (1 byte).
func DecodeNotifyResponse(f Frame) (NotifyResponse, error) {
	if err := checkFrame(f, messages.PcpCodeNotifyNewVersion, "response", resultOnlyLen); err != nil {
		return NotifyResponse{}, err
	}
	return NotifyResponse{Result: f.Data[0]}, nil
}

// DecodeSegmentRequest reads a device's 0x15 request (18 bytes).
func DecodeSegmentRequest(f Frame) (SegmentRequest, error) {
	if err := checkFrame(f, messages.PcpCodeRequestSegment, "request", segmentRequestLen); err != nil {
		return SegmentRequest{}, err
	}
	v, err := getVersion(f.Data, f.Code, "version")
	if err != nil {
		return SegmentRequest{}, err
	}
	return SegmentRequest{Version: v, SegmentNo: binary.BigEndian.Uint16(f.Data[16:])}, nil
}

// DecodeDownloadResult reads a device's 0x16 request (1 byte).
func DecodeDownloadResult(f Frame) (DownloadResult, error) {
	if err := checkFrame(f, messages.PcpCodeReportDownloadResult, "request", resultOnlyLen); err != nil {
		return DownloadResult{}, err
	}
	return DownloadResult{Status: f.Data[0]}, nil
}

// DecodeExecuteResponse reads a device's 0x17 response (1 byte).
func DecodeExecuteResponse(f Frame) (ExecuteResponse, error) {
	if err := checkFrame(f, messages.PcpCodeExecuteUpgrade, "response", resultOnlyLen); err != nil {
		return ExecuteResponse{}, err
	}
	return ExecuteResponse{Result: f.Data[0]}, nil
}

// DecodeUpgradeResult reads a device's 0x18 request (17 bytes).
func DecodeUpgradeResult(f Frame) (UpgradeResult, error) {
	if err := checkFrame(f, messages.PcpCodeReportUpgradeResult, "request", upgradeResultLen); err != nil {
		return UpgradeResult{}, err
	}
	v, err := getVersion(f.Data[1:], f.Code, "current version")
	if err != nil {
		return UpgradeResult{}, err
	}
	return UpgradeResult{Result: f.Data[0], Version: v}, nil
}

// ---- Device side (simulators): encode uplinks, decode downlinks ----

// EncodeVersionResponse returns the 0x13 response. It fails if the version
// is longer than 16 bytes, or is not ASCII or holds 0x00.
func EncodeVersionResponse(m VersionResponse) ([]byte, error) { return EncodeMessage(m) }

// EncodeNotifyResponse returns the 0x14 response.
func EncodeNotifyResponse(m NotifyResponse) []byte { return mustEncode(m) }

// EncodeSegmentRequest returns the 0x15 request. It fails if the version is
// longer than 16 bytes, or is not ASCII or holds 0x00.
func EncodeSegmentRequest(m SegmentRequest) ([]byte, error) { return EncodeMessage(m) }

// EncodeDownloadResult returns the 0x16 request.
func EncodeDownloadResult(m DownloadResult) []byte { return mustEncode(m) }

// EncodeExecuteResponse returns the 0x17 response.
func EncodeExecuteResponse(m ExecuteResponse) []byte { return mustEncode(m) }

// EncodeUpgradeResult returns the 0x18 request. It fails if the version is
// longer than 16 bytes, or is not ASCII or holds 0x00.
func EncodeUpgradeResult(m UpgradeResult) ([]byte, error) { return EncodeMessage(m) }

// DecodeQueryVersion checks the platform's 0x13 request (no data).
func DecodeQueryVersion(f Frame) (QueryVersion, error) {
	return QueryVersion{}, checkFrame(f, messages.PcpCodeQueryVersion, "request", 0)
}

// DecodeNotify reads the platform's 0x14 request (22 bytes).
func DecodeNotify(f Frame) (NotifyNewVersion, error) {
	if err := checkFrame(f, messages.PcpCodeNotifyNewVersion, "request", notifyLen); err != nil {
		return NotifyNewVersion{}, err
	}
	v, err := getVersion(f.Data, f.Code, "target version")
	if err != nil {
		return NotifyNewVersion{}, err
	}
	return NotifyNewVersion{
		Version:      v,
		SegmentSize:  binary.BigEndian.Uint16(f.Data[16:]),
		SegmentCount: binary.BigEndian.Uint16(f.Data[18:]),
		CheckCode:    binary.BigEndian.Uint16(f.Data[20:]),
	}, nil
}

// DecodeSegmentResponse reads the platform's 0x15 response: result, segment
// number and data (3 + n bytes). As spec 4.5 asks of devices, it also
// accepts a refusal of 1 byte (result only; SegmentNo is then 0). A refusal
// must not carry data, and a messages.PcpResultOK response must carry the segment
// number.
func DecodeSegmentResponse(f Frame) (SegmentResponse, error) {
	if f.Code != messages.PcpCodeRequestSegment {
		return SegmentResponse{}, malformed("frame of code %v, want %v response", f.Code, messages.PcpCodeRequestSegment)
	}
	n := len(f.Data)
	switch {
	case n == 0:
		return SegmentResponse{}, malformed("%v response: no data, want the result byte", f.Code)
	case f.Data[0] == messages.PcpResultOK && n < segmentHeaderLen:
		return SegmentResponse{}, malformed("%v response: result 0x00 with %d data bytes, want at least %d (result, segment number)", f.Code, n, segmentHeaderLen)
	case f.Data[0] != messages.PcpResultOK && n != 1 && n != segmentHeaderLen:
		return SegmentResponse{}, malformed("%v response: result 0x%02X with %d data bytes, want 1 or %d: a refusal carries no segment data", f.Code, f.Data[0], n, segmentHeaderLen)
	}
	r := SegmentResponse{Result: f.Data[0]}
	if n >= segmentHeaderLen {
		r.SegmentNo = binary.BigEndian.Uint16(f.Data[1:])
	}
	if n > segmentHeaderLen {
		r.Data = append([]byte(nil), f.Data[segmentHeaderLen:]...)
	}
	return r, nil
}

// DecodeDownloadResultAck reads the platform's 0x16 response (1 byte).
func DecodeDownloadResultAck(f Frame) (DownloadResultAck, error) {
	if err := checkFrame(f, messages.PcpCodeReportDownloadResult, "response", resultOnlyLen); err != nil {
		return DownloadResultAck{}, err
	}
	return DownloadResultAck{Result: f.Data[0]}, nil
}

// DecodeExecute checks the platform's 0x17 request (no data).
func DecodeExecute(f Frame) (ExecuteUpgrade, error) {
	return ExecuteUpgrade{}, checkFrame(f, messages.PcpCodeExecuteUpgrade, "request", 0)
}

// DecodeUpgradeResultAck reads the platform's 0x18 response (1 byte).
func DecodeUpgradeResultAck(f Frame) (UpgradeResultAck, error) {
	if err := checkFrame(f, messages.PcpCodeReportUpgradeResult, "response", resultOnlyLen); err != nil {
		return UpgradeResultAck{}, err
	}
	return UpgradeResultAck{Result: f.Data[0]}, nil
}

// ---- By direction ----

// DecodeUplink decodes a device → platform frame (a notification of
// /19/0/0) into its message: a VersionResponse, NotifyResponse,
// SegmentRequest, DownloadResult, ExecuteResponse or UpgradeResult, by
// code. Run IsPCP first to tell PCP from business data.
func DecodeUplink(b []byte) (Message, error) {
	f, err := Decode(b)
	if err != nil {
		return nil, err
	}
	switch f.Code {
	case messages.PcpCodeQueryVersion:
		return wrap(DecodeVersionResponse(f))
	case messages.PcpCodeNotifyNewVersion:
		return wrap(DecodeNotifyResponse(f))
	case messages.PcpCodeRequestSegment:
		return wrap(DecodeSegmentRequest(f))
	case messages.PcpCodeReportDownloadResult:
		return wrap(DecodeDownloadResult(f))
	case messages.PcpCodeExecuteUpgrade:
		return wrap(DecodeExecuteResponse(f))
	case messages.PcpCodeReportUpgradeResult:
		return wrap(DecodeUpgradeResult(f))
	}
	return nil, malformed("message code %v: 0x13 to 0x18 are defined", f.Code)
}

// DecodeDownlink decodes a platform → device frame (written to /19/1/0)
// into its message: a QueryVersion, NotifyNewVersion, SegmentResponse,
// DownloadResultAck, ExecuteUpgrade or UpgradeResultAck, by code.
func DecodeDownlink(b []byte) (Message, error) {
	f, err := Decode(b)
	if err != nil {
		return nil, err
	}
	switch f.Code {
	case messages.PcpCodeQueryVersion:
		return wrap(DecodeQueryVersion(f))
	case messages.PcpCodeNotifyNewVersion:
		return wrap(DecodeNotify(f))
	case messages.PcpCodeRequestSegment:
		return wrap(DecodeSegmentResponse(f))
	case messages.PcpCodeReportDownloadResult:
		return wrap(DecodeDownloadResultAck(f))
	case messages.PcpCodeExecuteUpgrade:
		return wrap(DecodeExecute(f))
	case messages.PcpCodeReportUpgradeResult:
		return wrap(DecodeUpgradeResultAck(f))
	}
	return nil, malformed("message code %v: 0x13 to 0x18 are defined", f.Code)
}

// wrap turns a typed decoder's result into a Message, nil on error.
func wrap[M Message](m M, err error) (Message, error) {
	if err != nil {
		return nil, err
	}
	return m, nil
}
