package messages

import "testing"

func TestPcpCodeString(t *testing.T) {
	for c, want := range map[PcpCode]string{
		PcpCodeQueryVersion:         "0x13 (query device version)",
		PcpCodeNotifyNewVersion:     "0x14 (new version notification)",
		PcpCodeRequestSegment:       "0x15 (request package segment)",
		PcpCodeReportDownloadResult: "0x16 (report download result)",
		PcpCodeExecuteUpgrade:       "0x17 (execute upgrade)",
		PcpCodeReportUpgradeResult:  "0x18 (report upgrade result)",
		0x12:                        "0x12 (reserved)",
		0x19:                        "0x19 (reserved)",
		0:                           "0x00 (reserved)",
		0xFF:                        "0xFF (reserved)",
	} {
		if got := c.String(); got != want {
			t.Errorf("PcpCode(0x%02X).String() = %q, want %q", byte(c), got, want)
		}
		if got := c.Valid(); got != (c >= 19 && c <= 24) {
			t.Errorf("PcpCode(%d).Valid() = %v", c, got)
		}
	}
}

func TestPcpResultText(t *testing.T) {
	for code, want := range map[byte]string{
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
		0x0B:                         "unknown result 0x0B",
		0xFF:                         "unknown result 0xFF",
	} {
		if got := PcpResultText(code); got != want {
			t.Errorf("PcpResultText(0x%02X) = %q, want %q", code, got, want)
		}
	}
	if len(pcpResultTexts) != 14 {
		t.Errorf("%d result codes, spec 4.6 has 14", len(pcpResultTexts))
	}
}
