package devicefsm

import (
	"fmt"
	"slices"

	"github.com/otafleet/otafleet/messages"
)

func (d *decider) proto() messages.Protocol { return d.s.Job.GetProtocol() }
func (d *decider) target() string           { return d.s.Job.GetPackage().GetVersion() }
func (d *decider) is(p messages.Protocol, stages ...messages.Stage) bool {
	return d.s.Job != nil && d.s.Job.GetProtocol() == p && slices.Contains(stages, d.s.Stage)
}

// ---- job start and stop ----

func (d *decider) startJob(j *messages.Job) {
	if cur := d.s.Job; cur != nil {
		if cur.GetTaskId() == j.GetTaskId() {
			return // the same task again (a task actor's Resume): already running
		}
		d.reject(j, messages.Reason_REASON_TASK_CONFLICT,
			fmt.Sprintf("task %s attempt %d is active on the device", cur.GetTaskId(), cur.GetAttempt()))
		return
	}
	if l := d.s.Last; l != nil && l.Outcome.GetTaskId() == j.GetTaskId() && j.GetAttempt() <= l.Outcome.GetAttempt() {
		// A late copy of a job that already ended (a task re-sending after a
		// restart): repeat its outcome instead of upgrading again.
		d.effect(&messages.DeviceEffect{Kind: &messages.DeviceEffect_ReportOutcome{ReportOutcome: cloneOutcome(l.Outcome)}})
		return
	}
	if d.s.Abnormal {
		d.reject(j, messages.Reason_REASON_DEVICE_ABNORMAL, "the device is marked abnormal")
		return
	}
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_JobAccepted{JobAccepted: &messages.JobAccepted{Job: j}}})
	if d.s.Reachable() {
		d.queryVersion()
		return
	}
	t := d.cfg.Online
	if j.GetProtocol() == protoMQTT {
		t = d.cfg.OnlineMQTT
	}
	d.enter(stWaitOnline, d.at.Add(t), 0)
	if j.GetProtocol() == protoMQTT {
		d.effect(mqttProbe(d.s.DeviceID))
	}
}

// mqttProbe is the version_query an MQTT job sends when it starts waiting for
// its device: a device on an external broker, whose connection otafleet
// cannot see, answers it, and its report starts the job. The transport
// decides what to do with it (the external-broker one repeats it while the
// device is awaited; the embedded broker has no subscriber for a device that
// is not connected). It is not queued in the outbox.
func mqttProbe(deviceID string) *messages.DeviceEffect {
	return &messages.DeviceEffect{Kind: &messages.DeviceEffect_Downlink{Downlink: &messages.Downlink{
		DeviceId: deviceID, Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}},
	}}}
}

func (d *decider) reject(j *messages.Job, r messages.Reason, detail string) {
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_JobRejected{JobRejected: &messages.JobRejected{
		TaskId: j.GetTaskId(), Attempt: j.GetAttempt(), Reason: r, Detail: detail,
	}}})
	d.effect(&messages.DeviceEffect{Kind: &messages.DeviceEffect_ReportOutcome{ReportOutcome: rejection(d.s.DeviceID, j, r, detail)}})
}

// rejection is the outcome of job j that the device rejected before it ran.
func rejection(deviceID string, j *messages.Job, r messages.Reason, detail string) *messages.ReportOutcome {
	return &messages.ReportOutcome{
		TaskId: j.GetTaskId(), DeviceId: deviceID, Attempt: j.GetAttempt(),
		Status: statusFail, Reason: r, Detail: detail,
	}
}

// Refused is the outcome of a StartJob that the device's actor refused
// with err without stepping it (an actor that cannot recover refuses every
// input): the job fails with REASON_INVALID_JOB and err as detail, so its
// sub-task ends. It is nil for any other input, and for a StartJob that
// names no task and attempt, or another device, which has no sub-task here
// to end.
func Refused(deviceID string, in *messages.DeviceInput, err error) *messages.ReportOutcome {
	sj := in.GetStartJob()
	j := sj.GetJob()
	if sj == nil || j.GetTaskId() == "" || j.GetAttempt() == 0 || (sj.GetDeviceId() != "" && sj.GetDeviceId() != deviceID) {
		return nil
	}
	return rejection(deviceID, j, messages.Reason_REASON_INVALID_JOB, err.Error())
}

func (d *decider) stopJob(taskID string) {
	if d.s.Job == nil || d.s.Job.GetTaskId() != taskID {
		return
	}
	stage := d.s.Stage
	d.finish(statusStopped, messages.Reason_REASON_STOPPED, "stopped in stage "+shortStage(stage), 0)
	// Spec 6.6 [P]: reset the device's object 5 when it holds a URI it has not installed yet.
	if d.s.Last.Protocol == protoFOTA && (stage == stNotified || stage == stDownloading || stage == stDownloaded) {
		d.send(fotaReset())
	}
}

// finish ends the active job: journal the outcome, give the cell slot back,
// revoke the download token, drop observations, tell the task.
func (d *decider) finish(status messages.SubtaskStatus, r messages.Reason, detail string, code int32) {
	j := d.s.Job
	stage := d.s.Stage
	cell := d.s.PermitCell
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_JobFinished{JobFinished: &messages.JobFinished{
		Status: status, Reason: r, Detail: detail, ResultCode: code, SourceVersion: d.srcVer,
		DeviceDescription: d.in.GetMqttProgress().GetDescription(), // the MQTT report that ends the job, if one does
	}}})
	d.srcVer = ""
	if cell != "" {
		d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_PermitReleased{PermitReleased: &messages.PermitReleased{CellId: cell}}})
		d.effect(&messages.DeviceEffect{Kind: &messages.DeviceEffect_ReleasePermit{ReleasePermit: &messages.ReleasePermit{CellId: cell, DeviceId: d.s.DeviceID}}})
	}
	// A device told where its package is (the MQTT URL and token, the FOTA
	// Package URI and its handle) may be downloading: its token is revoked,
	// so that a download server that keeps grants forgets this one.
	if (j.GetProtocol() == protoMQTT || j.GetProtocol() == protoFOTA) && stage >= stNotified {
		d.effect(&messages.DeviceEffect{Kind: &messages.DeviceEffect_RevokeToken{RevokeToken: &messages.RevokeToken{
			TaskId: j.GetTaskId(), DeviceId: d.s.DeviceID, Attempt: j.GetAttempt(),
		}}})
	}
	if j.GetProtocol() == protoFOTA && stage >= stNotified {
		for _, p := range []string{messages.PathFotaState, messages.PathUpdateResult} {
			d.send(&messages.Downlink{Kind: &messages.Downlink_Lwm2MCancelObserve{Lwm2MCancelObserve: &messages.Lwm2MCancelObserve{Path: p}}})
		}
	}
	d.effect(&messages.DeviceEffect{Kind: &messages.DeviceEffect_ReportOutcome{ReportOutcome: cloneOutcome(d.s.Last.Outcome)}})
}

func (d *decider) succeed(r messages.Reason, detail string) { d.finish(statusSuccess, r, detail, 0) }
func (d *decider) fail(r messages.Reason, detail string, code int32) {
	d.finish(statusFail, r, detail, code)
}

// ---- presence ----

func (d *decider) presence(online, awake, queue bool) {
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_PresenceChanged{PresenceChanged: &messages.PresenceChanged{
		Online: online, Awake: awake, QueueMode: queue,
	}}})
}

// markOnline records that the device is online and awake and flushes its outbox.
func (d *decider) markOnline(queue bool) {
	if !d.s.Online || !d.s.Awake || d.s.QueueMode != queue {
		d.presence(true, true, queue)
	}
	d.flush()
}

// reportArrived: any report proves the device online and awake; a job waiting
// for it to come online starts.
func (d *decider) reportArrived() {
	d.markOnline(d.s.QueueMode)
	if d.s.Job != nil && d.s.Stage == stWaitOnline {
		d.queryVersion()
	}
}

// connected: a new session. Observations of the old one are gone, so the flow
// re-establishes what the current stage needs (the reboot cue of spec 3.3):
// a job waiting for its device starts, any other sends what its stage owes
// (owed).
func (d *decider) connected(queue bool) {
	d.markOnline(queue)
	if d.s.Job == nil {
		return
	}
	if d.s.Stage == stWaitOnline {
		d.queryVersion()
		return
	}
	for _, dl := range owed(d.s, reconnected) {
		d.resend(dl)
	}
}

// uplink: traffic that is not a report. While a job waits for the version, an
// LwM2M device gets the query again on each uplink (spec 6.6). A
// registration update is also sent what the stage owes it then (owed).
func (d *decider) uplink(registrationUpdate bool) {
	d.markOnline(d.s.QueueMode)
	if d.s.Job == nil {
		return
	}
	if registrationUpdate {
		for _, dl := range owed(d.s, updated) {
			d.resend(dl)
		}
	}
	switch {
	case d.s.Stage == stWaitOnline:
		d.queryVersion()
	case d.s.Stage == stVersion && d.proto() != protoMQTT:
		d.sendOnce(versionQuery(d.proto()))
	}
}

// ---- version ----

func versionQuery(p messages.Protocol) *messages.Downlink {
	switch p {
	case protoMQTT:
		return &messages.Downlink{Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}}
	case protoPCP:
		return &messages.Downlink{Kind: &messages.Downlink_PcpQueryVersion{PcpQueryVersion: &messages.PcpQueryVersion{}}}
	default:
		return &messages.Downlink{Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: messages.PathFirmwareVersion}}}
	}
}

func observe(path string) *messages.Downlink {
	return &messages.Downlink{Kind: &messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: path}}}
}

func read(path string) *messages.Downlink {
	return &messages.Downlink{Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: path}}}
}

// readFotaObject is the read of object 5's instance (State and Update
// Result in one answer), tagged with the generation of s's stage: the
// transport echoes the tag in the answer (DeviceInput.request_tag), so that
// decider.executeAgain can tell an answer to a read sent after the last
// Execute (every Execute enters DOWNLOADED with a new generation) from one
// that may have left the device before that Execute reached it.
func readFotaObject(s State) *messages.Downlink {
	dl := read(messages.PathFotaObject)
	dl.GetLwm2MRead().Tag = s.Generation
	return dl
}

func mqttUpgrade(j *messages.Job) *messages.Downlink {
	return &messages.Downlink{Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{Job: j}}}
}

// queryVersion starts the version step (T2). PCP first subscribes to the
// device's uplink channel, which PCP itself travels on (spec 4.9).
func (d *decider) queryVersion() {
	if d.proto() == protoPCP {
		d.send(observe(messages.PathPCPUplink))
	}
	d.send(versionQuery(d.proto()))
	d.enter(stVersion, d.at.Add(d.cfg.VersionReport), 0)
}

// reportedVersion picks the version the job compares: fw for firmware, sw for software.
func (d *decider) reportedVersion(v *messages.VersionReported) (string, bool) {
	if d.s.Job.GetTaskType() == messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE {
		return v.GetSwVersion(), v.SwVersion != nil
	}
	return v.GetFwVersion(), v.FwVersion != nil
}

func (d *decider) recordVersion(fw, sw *string) {
	rec := &messages.VersionRecorded{}
	if fw != nil && (!d.s.HasFw || d.s.FwVersion != *fw) {
		rec.FwVersion = fw
	}
	if sw != nil && (!d.s.HasSw || d.s.SwVersion != *sw) {
		rec.SwVersion = sw
	}
	if rec.FwVersion != nil || rec.SwVersion != nil {
		d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_VersionRecorded{VersionRecorded: rec}})
	}
}

func (d *decider) versionReported(v *messages.VersionReported) {
	d.recordVersion(v.FwVersion, v.SwVersion)
	if d.s.Job == nil || d.proto() == protoPCP {
		return
	}
	ver, ok := d.reportedVersion(v)
	if !ok {
		return
	}
	switch d.s.Stage {
	case stVersion:
		d.decideVersion(ver)
	case stVerifying:
		d.verified(ver)
	case stNotified, stDownloading:
		// An MQTT device that reports the target version has upgraded (spec 6.3).
		if d.proto() == protoMQTT && ver == d.target() {
			d.succeed(messages.Reason_REASON_NONE, "version_report shows the target version")
		}
	}
}

// decideVersion is spec 6.3: equal → success; not an allowed source → fail;
// else go on (MQTT: notify; LwM2M: radio query).
func (d *decider) decideVersion(ver string) {
	pkg := d.s.Job.GetPackage()
	d.srcVer = ver
	switch {
	case ver == pkg.GetVersion():
		d.succeed(messages.Reason_REASON_SAME_VERSION, "reported "+ver)
	case len(pkg.GetSourceVersions()) > 0 && !slices.Contains(pkg.GetSourceVersions(), ver):
		d.fail(messages.Reason_REASON_SOURCE_VERSION_NOT_ALLOWED,
			fmt.Sprintf("reported %q, package accepts %q", ver, pkg.GetSourceVersions()), 0)
	default:
		d.upgrade()
	}
}

// upgrade goes on from the version check to the upgrade: MQTT notifies the
// device, LwM2M asks for its radio coverage first.
func (d *decider) upgrade() {
	if d.proto() == protoMQTT {
		d.send(mqttUpgrade(d.s.Job))
		d.enter(stNotified, d.at.Add(d.cfg.MQTTResult), 0)
		return
	}
	d.send(read(messages.PathConnMon))
	d.enter(stRadio, d.at.Add(d.cfg.RadioQuery), 0)
}

// verified handles the version read of STAGE_VERIFYING.
func (d *decider) verified(ver string) {
	if d.uncheckedVersion() {
		d.note(fmt.Sprintf("the device reports version %q after the upgrade, target %q: not compared (product option skip_version_check)", ver, d.target()))
		d.succeed(messages.Reason_REASON_NONE, "")
		return
	}
	if ver == d.target() {
		switch d.s.VerifyCause {
		case causeAlreadyLatest:
			d.succeed(messages.Reason_REASON_SAME_VERSION, "device reported already latest; version "+ver)
		case causeResultTimeout:
			d.succeed(messages.Reason_REASON_NONE, "no result reported, but the device runs the target version")
		default:
			d.succeed(messages.Reason_REASON_NONE, "")
		}
		return
	}
	detail := fmt.Sprintf("device reports %q, target %q", ver, d.target())
	switch d.s.VerifyCause {
	case causeAlreadyLatest:
		d.fail(messages.Reason_REASON_ALREADY_LATEST, detail, messages.PcpResultAlreadyLatest)
	case causeResultTimeout:
		d.fail(messages.Reason_REASON_RESULT_TIMEOUT, detail, 0)
	default:
		d.fail(messages.Reason_REASON_VERSION_MISMATCH, detail, 0)
	}
}

// uncheckedVersion: the version read after a successful update result only
// goes to the timeline (project decision 6, product option
// skip_version_check); whatever it answers, and when it is not answered,
// the job succeeds.
func (d *decider) uncheckedVersion() bool {
	return d.s.Stage == stVerifying && d.s.VerifyCause == causeResult && d.s.Job.GetSkipVersionCheck()
}

// verify starts STAGE_VERIFYING: read the version again (T10).
func (d *decider) verify(cause messages.VerifyCause) {
	d.send(versionQuery(d.proto()))
	d.enter(stVerifying, d.at.Add(d.cfg.VersionCheck), cause)
}

// ---- radio and cell ----

func (d *decider) radioReported(r *messages.RadioReported) {
	old := d.s.Radio
	nr := Radio{RSRP: r.GetRsrp(), HasRSRP: r.Rsrp != nil, SINR: r.GetSinr(), HasSINR: r.Sinr != nil, CellID: r.GetCellId()}
	if nr != old {
		d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_RadioRecorded{RadioRecorded: &messages.RadioRecorded{
			Rsrp: r.Rsrp, Sinr: r.Sinr, CellId: r.GetCellId(),
		}}})
	}
	if d.s.Job == nil || d.proto() == protoMQTT {
		return
	}
	full := r.Rsrp != nil && r.Sinr != nil && r.GetCellId() != ""
	switch {
	case d.s.Stage == stRadio && full:
		d.requestPermit(r, false)
	case d.s.Stage == stRadio && r.GetCellId() != "":
		// RSRP or SINR missing: the radio query failed, the cell ID fallback holds (spec 3.2).
		d.requestPermit(r, true)
	case d.s.Stage == stRadio:
		d.queryCell()
	case d.s.Stage == stCell && r.GetCellId() != "":
		d.requestPermit(r, !full)
	}
}

func (d *decider) queryCell() {
	d.send(read(messages.PathCellID))
	d.enter(stCell, d.at.Add(d.cfg.CellQuery), 0)
}

func (d *decider) requestPermit(r *messages.RadioReported, cellOnly bool) {
	cell := r.GetCellId()
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_PermitRequested{PermitRequested: &messages.PermitRequested{CellId: cell, CellOnly: cellOnly}}})
	d.enter(stWaitPermit, timeZero, 0)
	d.effect(&messages.DeviceEffect{Kind: &messages.DeviceEffect_RequestPermit{RequestPermit: permitRequest(d.s)}})
}

// permitRequest is the slot request of s's job (stage WAIT_PERMIT): the job,
// whether the radio query failed or lacked a value (cell_only), and every
// radio value the device reported, even then. The cell grades them
// (cellfsm.Classify): a value outside every range makes the device poor
// whatever is missing (spec decision 7), so none is dropped here.
func permitRequest(s State) *messages.RequestPermit {
	req := &messages.RequestPermit{
		CellId: s.PermitCell, DeviceId: s.DeviceID, CellOnly: s.PermitCellOnly,
		TaskId: s.Job.GetTaskId(), Attempt: s.Job.GetAttempt(),
	}
	if s.Radio.HasRSRP {
		req.Rsrp = &s.Radio.RSRP
	}
	if s.Radio.HasSINR {
		req.Sinr = &s.Radio.SINR
	}
	return req
}

func (d *decider) permitGranted(cell string) {
	if d.s.Job == nil || d.s.PermitCell != cell {
		// Not asked for (or no longer wanted): hand it straight back so the cell
		// never keeps a slot for a device that does not use it.
		d.effect(&messages.DeviceEffect{Kind: &messages.DeviceEffect_ReleasePermit{ReleasePermit: &messages.ReleasePermit{CellId: cell, DeviceId: d.s.DeviceID}}})
		return
	}
	if d.s.PermitHeld || d.s.Stage != stWaitPermit {
		return // a duplicate grant (the cell's Resume)
	}
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_PermitHeld{PermitHeld: &messages.PermitHeld{CellId: cell}}})
	switch d.proto() {
	case protoFOTA:
		d.send(observe(messages.PathFotaState))
		d.send(observe(messages.PathUpdateResult))
		for _, dl := range packageURIWrites(d.s) {
			d.resend(dl) // the reset, then the URI (spec 3.3 steps 10-11)
		}
	case protoPCP:
		d.send(pcpNotify(d.s.Job.GetPackage()))
	}
	deadline := d.at.Add(d.cfg.DownloadStart)
	if d.proto() == protoFOTA {
		deadline = d.fotaWaitDeadline(stNotified, d.at)
	}
	d.enter(stNotified, deadline, 0)
}

// ---- deadlines ----

func (d *decider) deadlineFired(f *messages.DeadlineFired) {
	if d.s.Job == nil || d.s.Deadline.IsZero() || f.GetGeneration() != d.s.Generation || f.GetStep() != DeadlineStep(d.s.Stage) {
		return // stale
	}
	mqtt := d.proto() == protoMQTT
	switch d.s.Stage {
	case stWaitOnline:
		d.fail(messages.Reason_REASON_ONLINE_TIMEOUT, "", 0)
	case stVersion:
		d.fail(messages.Reason_REASON_VERSION_REPORT_TIMEOUT, "", 0)
	case stRadio:
		d.queryCell()
	case stCell:
		d.fail(messages.Reason_REASON_CELL_ID_TIMEOUT, "", 0)
	case stNotified:
		switch {
		case mqtt:
			d.fail(messages.Reason_REASON_RESULT_TIMEOUT, "", 0)
		case d.proto() == protoFOTA && d.s.Deadline.Before(d.fotaWaitEnd(stNotified)):
			d.probeDownload()
		default:
			d.fail(messages.Reason_REASON_DOWNLOAD_START_TIMEOUT, "", 0)
		}
	case stDownloading:
		switch {
		case mqtt:
			d.fail(messages.Reason_REASON_RESULT_TIMEOUT, fmt.Sprintf("last progress %d%%", d.s.Progress), 0)
		case d.proto() == protoFOTA && d.s.Deadline.Before(d.fotaWaitEnd(stDownloading)):
			d.probeDownload()
		default:
			d.fail(messages.Reason_REASON_DOWNLOAD_TIMEOUT, "", 0)
		}
	case stDownloaded:
		if d.pcpExecuteDue() {
			// No answer to the 0x16 acknowledgement in time (or a restart
			// lost it, see Resume): the 0x17 goes now, T8 counts from it.
			d.pcpExecute()
			return
		}
		d.fail(messages.Reason_REASON_UPDATE_START_TIMEOUT, "", 0)
	case stUpgrading:
		if d.s.Job.GetSkipVersionCheck() {
			d.fail(messages.Reason_REASON_RESULT_TIMEOUT, "", 0)
			return
		}
		d.verify(causeResultTimeout)
	case stVerifying:
		switch {
		case d.uncheckedVersion():
			d.note("the version read after the upgrade was not answered: not compared (product option skip_version_check)")
			d.succeed(messages.Reason_REASON_NONE, "")
		case d.s.VerifyCause == causeResultTimeout:
			d.fail(messages.Reason_REASON_VERSION_CHECK_TIMEOUT, "", 0)
		case d.s.VerifyCause == causeAlreadyLatest:
			d.fail(messages.Reason_REASON_ALREADY_LATEST, "version check after the refusal timed out", messages.PcpResultAlreadyLatest)
		default:
			d.fail(messages.Reason_REASON_VERSION_REPORT_TIMEOUT, "update result was success; the version read timed out", 0)
		}
	}
}
