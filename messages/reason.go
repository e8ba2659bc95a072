package messages

import "fmt"

// reasonText holds the exact failure strings users search for. Platform-detected
// ones are spec 5.10 verbatim; Update Result ones are spec 3.6; device result codes
// are spec 2.6 (MQTT) and 4.6 (PCP), which share their numbers, in one wording.
var reasonText = map[Reason]string{
	Reason_REASON_NONE:                       "",
	Reason_REASON_DEVICE_ABNORMAL:            "Device Abnormal is not online",
	Reason_REASON_TASK_CONFLICT:              "Task Conflict",
	Reason_REASON_ONLINE_TIMEOUT:             "Waiting for the device online timeout",
	Reason_REASON_VERSION_REPORT_TIMEOUT:     "Waiting for report device firmware version timeout",
	Reason_REASON_CELL_ID_TIMEOUT:            "Waiting for report cellId timeout",
	Reason_REASON_DOWNLOAD_START_TIMEOUT:     "Waiting for device start download package timeout",
	Reason_REASON_DOWNLOAD_TIMEOUT:           "Waiting for device downloaded package timeout",
	Reason_REASON_UPDATE_START_TIMEOUT:       "Waiting for device start to update timeout",
	Reason_REASON_RESULT_TIMEOUT:             "Wait for the device to report upgrade result timeout",
	Reason_REASON_VERSION_CHECK_TIMEOUT:      "Updating timeout and query device version for check timeout",
	Reason_REASON_SAME_VERSION:               "The current version is the same as the target version",
	Reason_REASON_VERSION_MISMATCH:           "Device version after upgrade does not match the target version",
	Reason_REASON_SOURCE_VERSION_NOT_ALLOWED: "The current version is not a supported source version of the package",

	Reason_REASON_FW_NOT_ENOUGH_STORAGE:       "Not enough storage for the new firmware package",
	Reason_REASON_FW_OUT_OF_MEMORY:            "Out of memory during downloading process",
	Reason_REASON_FW_CONNECTION_LOST:          "Connection lost during downloading process",
	Reason_REASON_FW_INTEGRITY_CHECK:          "Integrity check failure for new downloaded package",
	Reason_REASON_FW_UNSUPPORTED_PACKAGE_TYPE: "Unsupported package type",
	Reason_REASON_FW_INVALID_URI:              "Invalid URI",
	Reason_REASON_FW_UPDATE_FAILED:            "Firmware update failed",
	Reason_REASON_FW_UNSUPPORTED_PROTOCOL:     "Unsupported protocol",
	Reason_REASON_FW_CANCELLED:                "Firmware update cancelled",

	Reason_REASON_DEVICE_BUSY:                 "Device busy",
	Reason_REASON_POOR_SIGNAL:                 "Poor signal quality",
	Reason_REASON_ALREADY_LATEST:              "Already at the latest version",
	Reason_REASON_LOW_BATTERY:                 "Low battery",
	Reason_REASON_INSUFFICIENT_STORAGE:        "Insufficient storage",
	Reason_REASON_DEVICE_DOWNLOAD_TIMEOUT:     "Download timed out",
	Reason_REASON_PACKAGE_VERIFICATION_FAILED: "Package verification failed",
	Reason_REASON_PACKAGE_TYPE_UNSUPPORTED:    "Package type not supported",
	Reason_REASON_DEVICE_OUT_OF_MEMORY:        "Out of memory",
	Reason_REASON_INSTALL_FAILED:              "Installing the package failed",
	Reason_REASON_INTERNAL_ERROR:              "Internal error",
	Reason_REASON_UNKNOWN_RESULT_CODE:         "Device reported an unknown result code",
	Reason_REASON_STOPPED:                     "Stopped by user",
	Reason_REASON_INVALID_JOB:                 "The upgrade cannot run on the device",
}

// ReasonText returns the user-facing string of r; "" for REASON_NONE.
func ReasonText(r Reason) string {
	if s, ok := reasonText[r]; ok {
		return s
	}
	return fmt.Sprintf("unknown reason %d", int32(r))
}

// ReasonFromText is the inverse of ReasonText.
func ReasonFromText(s string) (Reason, bool) {
	for r, t := range reasonText {
		if t == s {
			return r, true
		}
	}
	return Reason_REASON_NONE, false
}
