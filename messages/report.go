package messages

// IsReport reports whether in is a device report: something the device said
// about itself (a version, its radio, an answer to a request, a FOTA state, an
// MQTT progress report, a PCP message), as opposed to presence (Connected,
// Disconnected, Uplink, Asleep), the download servers' DownloadServed notes
// and the engine's own commands and timers. A transport acknowledges a
// report to the device only once the engine has journaled it durably,
// because a device does not send an acknowledged report again; a report it
// marks no_ack (nothing acknowledged on it: an answer to the server's own
// request, a non-confirmable notification) is journaled without that wait
// for an fsync.
func (x *DeviceInput) IsReport() bool {
	switch x.GetKind().(type) {
	case *DeviceInput_VersionReported, *DeviceInput_RadioReported, *DeviceInput_Lwm2MResponse,
		*DeviceInput_FotaStatus, *DeviceInput_MqttProgress,
		*DeviceInput_PcpVersion, *DeviceInput_PcpNotifyResponse, *DeviceInput_PcpSegmentRequest,
		*DeviceInput_PcpDownloadResult, *DeviceInput_PcpExecuteResponse, *DeviceInput_PcpUpgradeResult:
		return true
	}
	return false
}

// KindName is the name of in's kind as in the proto ("mqtt_progress",
// "fota_status", ...); "" when it has none. Metrics label inputs with it.
func (x *DeviceInput) KindName() string {
	if x == nil {
		return ""
	}
	m := x.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("kind"))
	if fd == nil {
		return ""
	}
	return string(fd.Name())
}
