package messages

import "fmt"

// PcpCode is a PCP message code (spec 4.4): the byte that names a PCP frame
// and that Lwm2MResponse.pcp_code carries. Codes 0x13 to 0x18 (19 to 24) are
// defined; the others are reserved. Each request is answered with the same
// code.
type PcpCode byte

// The PCP message codes.
const (
	PcpCodeQueryVersion         PcpCode = 0x13 // query device version: platform → device
	PcpCodeNotifyNewVersion     PcpCode = 0x14 // new version notification: platform → device
	PcpCodeRequestSegment       PcpCode = 0x15 // request package segment: device → platform
	PcpCodeReportDownloadResult PcpCode = 0x16 // report download result: device → platform
	PcpCodeExecuteUpgrade       PcpCode = 0x17 // execute upgrade: platform → device
	PcpCodeReportUpgradeResult  PcpCode = 0x18 // report upgrade result: device → platform
)

var pcpCodeNames = [...]string{
	PcpCodeQueryVersion - PcpCodeQueryVersion:         "query device version",
	PcpCodeNotifyNewVersion - PcpCodeQueryVersion:     "new version notification",
	PcpCodeRequestSegment - PcpCodeQueryVersion:       "request package segment",
	PcpCodeReportDownloadResult - PcpCodeQueryVersion: "report download result",
	PcpCodeExecuteUpgrade - PcpCodeQueryVersion:       "execute upgrade",
	PcpCodeReportUpgradeResult - PcpCodeQueryVersion:  "report upgrade result",
}

// Valid reports whether c is one of the six defined codes.
func (c PcpCode) Valid() bool {
	return c >= PcpCodeQueryVersion && c <= PcpCodeReportUpgradeResult
}

// String returns the code in hex with its name, as "0x15 (request package
// segment)", or "0x12 (reserved)".
func (c PcpCode) String() string {
	name := "reserved"
	if c.Valid() {
		name = pcpCodeNames[c-PcpCodeQueryVersion]
	}
	return fmt.Sprintf("0x%02X (%s)", byte(c), name)
}

// The PCP result codes of spec 4.6, one table for every PCP result and
// status byte (the result fields of the Pcp* messages). Codes 0x80 and up
// are sent by the platform. MQTT's result_code (spec 2.6) shares codes 0 to
// 10; its internal error is 255.
const (
	PcpResultOK                  = 0x00 // OK / allowed / success (all messages)
	PcpResultBusy                = 0x01 // device busy (0x14 and 0x17 responses, 0x18)
	PcpResultPoorSignal          = 0x02 // poor signal (0x14 response)
	PcpResultAlreadyLatest       = 0x03 // already latest version (0x14 response)
	PcpResultLowBattery          = 0x04 // low battery (0x14 and 0x17 responses, 0x18)
	PcpResultInsufficientStorage = 0x05 // insufficient storage (0x14 and 0x17 responses, 0x16, 0x18)
	PcpResultDownloadTimeout     = 0x06 // download timeout (0x16)
	PcpResultVerificationFailed  = 0x07 // package verification failed (0x16)
	PcpResultUnsupportedPackage  = 0x08 // package type unsupported (0x16)
	PcpResultOutOfMemory         = 0x09 // out of memory (0x14 and 0x17 responses, 0x18)
	PcpResultInstallFailed       = 0x0A // package installation failed (0x18)
	PcpResultInternalError       = 0x7F // internal error (0x14 and 0x17 responses, 0x18)
	PcpResultNoSuchTask          = 0x80 // upgrade task does not exist (0x15, 0x16 and 0x18 responses)
	PcpResultNoSuchSegment       = 0x81 // requested segment does not exist (0x15 response)
)

var pcpResultTexts = map[byte]string{
	PcpResultOK:                  "OK",
	PcpResultBusy:                "device busy",
	PcpResultPoorSignal:          "poor signal",
	PcpResultAlreadyLatest:       "already latest version",
	PcpResultLowBattery:          "low battery",
	PcpResultInsufficientStorage: "insufficient storage",
	PcpResultDownloadTimeout:     "download timeout",
	PcpResultVerificationFailed:  "package verification failed",
	PcpResultUnsupportedPackage:  "package type unsupported",
	PcpResultOutOfMemory:         "out of memory",
	PcpResultInstallFailed:       "package installation failed",
	PcpResultInternalError:       "internal error",
	PcpResultNoSuchTask:          "upgrade task does not exist",
	PcpResultNoSuchSegment:       "requested segment does not exist",
}

// PcpResultText returns the meaning of a PCP result or status code as spec
// 4.6 words it ("device busy"), or "unknown result 0x42", for logs and
// timelines. It is not a sub-task failure reason: ReasonText words those.
func PcpResultText(code byte) string {
	if s, ok := pcpResultTexts[code]; ok {
		return s
	}
	return fmt.Sprintf("unknown result 0x%02X", code)
}

// PCP field sizes (spec 4.5 and 5.8).
const (
	// PcpVersionLen is the size of a version field: at most 16 bytes of
	// ASCII, right-padded with 0x00.
	PcpVersionLen = 16
	// A package is sent in segments of its segment size (deviceShard),
	// PcpMinSegmentSize to PcpMaxSegmentSize bytes, PcpDefaultSegmentSize
	// when the package names none.
	PcpMinSegmentSize     = 32
	PcpMaxSegmentSize     = 500
	PcpDefaultSegmentSize = 500
	// PcpMaxSegments is the most segments a package can have: the count is
	// a WORD, and numbers run from 0 to PcpMaxSegments-1.
	PcpMaxSegments = 0xFFFF
)
