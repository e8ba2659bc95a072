package pcp

import "fmt"

// The result codes of spec 4.6, one table for every PCP result and status
// byte. Codes 0x80 and up are sent by the platform.
const (
	ResultOK                  = 0x00 // OK / allowed / success (all messages)
	ResultBusy                = 0x01 // device busy (0x14 and 0x17 responses, 0x18)
	ResultPoorSignal          = 0x02 // poor signal (0x14 response)
	ResultAlreadyLatest       = 0x03 // already latest version (0x14 response)
	ResultLowBattery          = 0x04 // low battery (0x14 and 0x17 responses, 0x18)
	ResultInsufficientStorage = 0x05 // insufficient storage (0x14 and 0x17 responses, 0x16, 0x18)
	ResultDownloadTimeout     = 0x06 // download timeout (0x16)
	ResultVerificationFailed  = 0x07 // package verification failed (0x16)
	ResultUnsupportedPackage  = 0x08 // package type unsupported (0x16)
	ResultOutOfMemory         = 0x09 // out of memory (0x14 and 0x17 responses, 0x18)
	ResultInstallFailed       = 0x0A // package installation failed (0x18)
	ResultInternalError       = 0x7F // internal error (0x14 and 0x17 responses, 0x18)
	ResultNoSuchTask          = 0x80 // upgrade task does not exist (0x15, 0x16 and 0x18 responses)
	ResultNoSuchSegment       = 0x81 // requested segment does not exist (0x15 response)
)

var resultTexts = map[byte]string{
	ResultOK:                  "OK",
	ResultBusy:                "device busy",
	ResultPoorSignal:          "poor signal",
	ResultAlreadyLatest:       "already latest version",
	ResultLowBattery:          "low battery",
	ResultInsufficientStorage: "insufficient storage",
	ResultDownloadTimeout:     "download timeout",
	ResultVerificationFailed:  "package verification failed",
	ResultUnsupportedPackage:  "package type unsupported",
	ResultOutOfMemory:         "out of memory",
	ResultInstallFailed:       "package installation failed",
	ResultInternalError:       "internal error",
	ResultNoSuchTask:          "upgrade task does not exist",
	ResultNoSuchSegment:       "requested segment does not exist",
}

// ResultText returns the meaning of a PCP result or status code as spec 4.6
// words it ("device busy"), or "unknown result 0x42", for logs and
// timelines. It is not a sub-task failure reason: the engine owns those.
func ResultText(code byte) string {
	if s, ok := resultTexts[code]; ok {
		return s
	}
	return fmt.Sprintf("unknown result 0x%02X", code)
}
