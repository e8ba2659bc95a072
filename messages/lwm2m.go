package messages

// LwM2M object and resource paths of the upgrade flows (spec 3.2 and 4.1),
// as the strings that Lwm2MRead, Lwm2MObserve, Lwm2MWrite, Lwm2MExecute and
// Lwm2MResponse carry. The device machine asks for them, the LwM2M transport
// decodes their answers, and the simulated devices serve them.
const (
	PathFirmwareVersion = "/3/0/3"  // Device: Firmware Version (String)
	PathSoftwareVersion = "/3/0/19" // Device: Software Version (String)
	PathConnMon         = "/4/0"    // Connectivity Monitoring instance: the radio query reads it whole
	PathRSRP            = "/4/0/2"  // Connectivity Monitoring: Radio Signal Strength (NB-IoT: NRSRP, dBm)
	PathCellID          = "/4/0/8"  // Connectivity Monitoring: Cell ID (the fallback query)
	PathSINR            = "/4/0/11" // Connectivity Monitoring: SignalSNR (dB)
	PathFotaObject      = "/5/0"    // Firmware Update instance: State and Update Result in one read
	PathPackageURI      = "/5/0/1"  // Firmware Update: Package URI (String, 0 to 255)
	PathUpdate          = "/5/0/2"  // Firmware Update: Update (Execute)
	PathFotaState       = "/5/0/3"  // Firmware Update: State (FotaState* values)
	PathUpdateResult    = "/5/0/5"  // Firmware Update: Update Result (UpdateResult* values)
	PathPCPUplink       = "/19/0/0" // BinaryAppDataContainer: device → platform data (PCP uplinks)
	PathPCPDownlink     = "/19/1/0" // BinaryAppDataContainer: platform → device data (PCP downlinks)
)

// The values of Firmware Update State, /5/0/3 (spec 3.5), as FotaStatus.state
// carries them.
const (
	FotaStateIdle        = 0 // before a download, and after a successful update
	FotaStateDownloading = 1
	FotaStateDownloaded  = 2 // the only state in which Update may be executed
	FotaStateUpdating    = 3
)

// The values of Firmware Update Result, /5/0/5 (spec 3.6), as
// FotaStatus.update_result carries them. Codes 2 to 10 are failures.
const (
	UpdateResultInitial             = 0 // initial value, or a download or update in progress
	UpdateResultSuccess             = 1
	UpdateResultNotEnoughStorage    = 2
	UpdateResultOutOfMemory         = 3
	UpdateResultConnectionLost      = 4
	UpdateResultIntegrityCheck      = 5
	UpdateResultUnsupportedPackage  = 6
	UpdateResultInvalidURI          = 7
	UpdateResultUpdateFailed        = 8
	UpdateResultUnsupportedProtocol = 9
	UpdateResultCancelled           = 10 // LwM2M 1.1
	UpdateResultDeferred            = 11 // LwM2M 1.1: the update waits; not a failure
)
