package devicefsm

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

func cloneOutcome(o *messages.ReportOutcome) *messages.ReportOutcome {
	return proto.Clone(o).(*messages.ReportOutcome)
}

func shortStage(st messages.Stage) string {
	return strings.TrimPrefix(st.String(), "STAGE_")
}

// ---- result-code mapping ----

// UpdateResultReason maps an LwM2M object 5 Update Result (spec 3.6) to a
// failure reason; ok is false for codes that are not failures (0, 1, 11).
func UpdateResultReason(code int32) (r messages.Reason, ok bool) {
	switch code {
	case messages.UpdateResultNotEnoughStorage:
		return messages.Reason_REASON_FW_NOT_ENOUGH_STORAGE, true
	case messages.UpdateResultOutOfMemory:
		return messages.Reason_REASON_FW_OUT_OF_MEMORY, true
	case messages.UpdateResultConnectionLost:
		return messages.Reason_REASON_FW_CONNECTION_LOST, true
	case messages.UpdateResultIntegrityCheck:
		return messages.Reason_REASON_FW_INTEGRITY_CHECK, true
	case messages.UpdateResultUnsupportedPackage:
		return messages.Reason_REASON_FW_UNSUPPORTED_PACKAGE_TYPE, true
	case messages.UpdateResultInvalidURI:
		return messages.Reason_REASON_FW_INVALID_URI, true
	case messages.UpdateResultUpdateFailed:
		return messages.Reason_REASON_FW_UPDATE_FAILED, true
	case messages.UpdateResultUnsupportedProtocol:
		return messages.Reason_REASON_FW_UNSUPPORTED_PROTOCOL, true
	case messages.UpdateResultCancelled:
		return messages.Reason_REASON_FW_CANCELLED, true
	case messages.UpdateResultInitial, messages.UpdateResultSuccess, messages.UpdateResultDeferred:
		return messages.Reason_REASON_NONE, false
	default:
		return messages.Reason_REASON_UNKNOWN_RESULT_CODE, true
	}
}

// DeviceCodeReason maps a device result code shared by MQTT result_code
// (spec 2.6) and PCP (spec 4.6; 0x7F there is 255 in MQTT) to a reason. Code 0
// is not a failure.
func DeviceCodeReason(code int32) messages.Reason {
	switch code {
	case messages.PcpResultOK:
		return messages.Reason_REASON_NONE
	case messages.PcpResultBusy:
		return messages.Reason_REASON_DEVICE_BUSY
	case messages.PcpResultPoorSignal:
		return messages.Reason_REASON_POOR_SIGNAL
	case messages.PcpResultAlreadyLatest:
		return messages.Reason_REASON_ALREADY_LATEST
	case messages.PcpResultLowBattery:
		return messages.Reason_REASON_LOW_BATTERY
	case messages.PcpResultInsufficientStorage:
		return messages.Reason_REASON_INSUFFICIENT_STORAGE
	case messages.PcpResultDownloadTimeout:
		return messages.Reason_REASON_DEVICE_DOWNLOAD_TIMEOUT
	case messages.PcpResultVerificationFailed:
		return messages.Reason_REASON_PACKAGE_VERIFICATION_FAILED
	case messages.PcpResultUnsupportedPackage:
		return messages.Reason_REASON_PACKAGE_TYPE_UNSUPPORTED
	case messages.PcpResultOutOfMemory:
		return messages.Reason_REASON_DEVICE_OUT_OF_MEMORY
	case messages.PcpResultInstallFailed:
		return messages.Reason_REASON_INSTALL_FAILED
	case 255, messages.PcpResultInternalError: // MQTT, PCP
		return messages.Reason_REASON_INTERNAL_ERROR
	default:
		return messages.Reason_REASON_UNKNOWN_RESULT_CODE
	}
}

// ---- MQTT (spec 2.6, 2.10) ----

func (d *decider) mqttProgress(p *messages.MqttProgress) {
	if !d.is(protoMQTT, stNotified, stDownloading) {
		return // no MQTT job waiting for progress: a late or duplicate report
	}
	code := p.GetResultCode()
	ver := p.GetVersion()
	switch {
	case code == 0 && ver == d.target():
		d.recordJobVersion(ver)
		d.succeed(messages.Reason_REASON_NONE, "")
	case code == 0 && p.Progress != nil && p.GetProgress() == 100:
		d.recordJobVersion(ver)
		d.fail(messages.Reason_REASON_VERSION_MISMATCH, fmt.Sprintf("progress 100%% with version %q, target %q", ver, d.target()), 0)
	case code == 0:
		if p.Progress != nil && p.GetProgress() < d.s.Progress {
			return // older than what we know: reordered
		}
		if d.s.Stage == stNotified {
			d.enter(stDownloading, d.s.Deadline, 0)
		}
		if p.Progress != nil && p.GetProgress() != d.s.Progress {
			d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_ProgressRecorded{ProgressRecorded: &messages.ProgressRecorded{Progress: p.GetProgress()}}})
		}
	case code == 3 && ver == d.target():
		d.recordJobVersion(ver)
		d.succeed(messages.Reason_REASON_SAME_VERSION, "device reported already latest")
	default:
		detail := p.GetDescription()
		d.fail(DeviceCodeReason(code), detail, code)
	}
}

// recordJobVersion records a version reported inside a progress report under
// the job's kind (fw for firmware, sw for software).
func (d *decider) recordJobVersion(v string) {
	if v == "" {
		return
	}
	if d.s.Job.GetTaskType() == messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE {
		d.recordVersion(nil, &v)
	} else {
		d.recordVersion(&v, nil)
	}
}

// ---- LwM2M FOTA (spec 3.3, 3.5, 3.6) ----

func packageURIWrite(j *messages.Job) *messages.Downlink {
	return &messages.Downlink{Kind: &messages.Downlink_Lwm2MWritePackageUri{Lwm2MWritePackageUri: &messages.Lwm2MWritePackageUri{Job: j}}}
}

// fotaReset is the empty write of /5/0/1: it resets the device's firmware
// update state machine to Idle with Update Result 0 and discards what it
// downloaded (LwM2M 1.1 E.6, spec 3.4).
func fotaReset() *messages.Downlink {
	return &messages.Downlink{Kind: &messages.Downlink_Lwm2MWrite{Lwm2MWrite: &messages.Lwm2MWrite{Path: messages.PathPackageURI, Value: ""}}}
}

// packageURIWrites are the downlinks that give a FOTA device its job's
// package URI: the write of /5/0/1, preceded by the reset (fotaReset) while
// the device has not acknowledged the job's URI yet (State.UriHeld), so
// that a device a failed attempt left in State 2, or downloading another
// URI, takes the new one (a client refuses a URI outside State 0); never
// once it holds the URI, whose partial download the reset would discard.
func packageURIWrites(s State) []*messages.Downlink {
	if s.UriHeld {
		return []*messages.Downlink{packageURIWrite(s.Job)}
	}
	return []*messages.Downlink{fotaReset(), packageURIWrite(s.Job)}
}

// writePackageURI journals that /5/0/1 is written (object 5's reports wait
// for the write's acknowledgement) and writes it.
func (d *decider) writePackageURI() {
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_PackageUriSent{PackageUriSent: &messages.PackageUriSent{}}})
	d.send(packageURIWrite(d.s.Job))
}

func (d *decider) lwm2mResponse(r *messages.Lwm2MResponse) {
	if d.s.Job == nil || d.proto() == protoMQTT {
		return
	}
	path, op := r.GetPath(), r.GetOp()
	detail := fmt.Sprintf("%s %s answered %s", strings.TrimPrefix(op.String(), "LWM2M_OP_"), path, r.GetCode())
	if op == messages.Lwm2MOp_LWM2M_OP_WRITE && path == messages.PathPCPDownlink && r.GetPcpCode() == uint32(messages.PcpCodeReportDownloadResult) && d.pcpExecuteDue() {
		// The device answered the 0x16 acknowledgement: the 0x17 goes now,
		// straight after its journal entry. A refusal of the write gets it
		// too: waiting longer cannot help.
		if !r.GetSuccess() {
			d.note(detail + ": the 0x16 acknowledgement was refused; 0x17 sent anyway")
		}
		d.pcpExecute()
		return
	}
	uriWrite := op == messages.Lwm2MOp_LWM2M_OP_WRITE && path == messages.PathPackageURI && d.is(protoFOTA, stNotified, stDownloading)
	if uriWrite && r.GetFotaReset() {
		// The reset before the URI: its answer says nothing about the URI,
		// which the write after it decides.
		if !r.GetSuccess() {
			d.note(detail + ": the reset of the firmware update state machine was refused; the package URI follows")
		}
		return
	}
	if r.GetSuccess() {
		if uriWrite && !d.s.UriAcked {
			d.acceptURI()
		}
		return
	}
	switch {
	case d.s.Stage == stVersion && path == messages.PathFirmwareVersion && d.s.Job.GetSkipVersionCheck():
		// Project decision 6: a fleet that skips version checks may not
		// report /3/0/3 at all; the version is unknown and the upgrade goes on.
		d.note(detail + ": version unknown; the upgrade goes on (product option skip_version_check)")
		d.upgrade()
	case d.s.Stage == stVersion && path == messages.PathFirmwareVersion:
		// The device cannot report its version: waiting longer cannot help.
		d.fail(messages.Reason_REASON_VERSION_REPORT_TIMEOUT, detail, 0)
	case d.s.Stage == stRadio && strings.HasPrefix(path, messages.PathConnMon):
		d.queryCell()
	case d.s.Stage == stCell && path == messages.PathCellID:
		d.fail(messages.Reason_REASON_CELL_ID_TIMEOUT, detail, 0)
	case uriWrite && d.s.UriHeld:
		// A URI the device acknowledged before, written again: a client
		// refuses a write while it downloads (outside State 0), so the
		// refusal says it holds the URI; its object 5 reports count again.
		d.note(detail + ": the device holds the package URI already")
		d.acceptURI()
	case uriWrite:
		d.fail(messages.Reason_REASON_FW_INVALID_URI, detail, 0)
	case d.is(protoFOTA, stDownloaded) && op == messages.Lwm2MOp_LWM2M_OP_EXECUTE && path == messages.PathUpdate:
		d.fail(messages.Reason_REASON_FW_UPDATE_FAILED, detail, 0)
	case d.s.Stage == stVerifying && path == messages.PathFirmwareVersion && d.uncheckedVersion():
		d.note(detail + ": version after the upgrade unknown; not compared (product option skip_version_check)")
		d.succeed(messages.Reason_REASON_NONE, "")
	case d.s.Stage == stVerifying && path == messages.PathFirmwareVersion:
		if d.s.VerifyCause == causeResultTimeout {
			d.fail(messages.Reason_REASON_VERSION_CHECK_TIMEOUT, detail, 0)
		} else {
			d.fail(messages.Reason_REASON_VERSION_REPORT_TIMEOUT, detail, 0)
		}
	}
}

// acceptURI journals that the device took the job's package URI: object 5's
// reports count from now on.
func (d *decider) acceptURI() {
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_PackageUriAccepted{PackageUriAccepted: &messages.PackageUriAccepted{}}})
}

func (d *decider) fotaStatus(f *messages.FotaStatus) {
	if d.s.Job == nil || d.proto() != protoFOTA {
		return
	}
	st := d.s.Stage
	if (st == stNotified || st == stDownloading) && !d.s.UriAcked {
		return // object 5 still shows the state from before our write
	}
	if st < stNotified || st > stUpgrading {
		return
	}
	// State and Update Result together answer the read of object 5
	// (messages.PathFotaObject) that Resume and a new session send; only
	// that answer, a report the server asked for (no_ack), tells what the
	// device holds now. A notification the device expects acknowledged
	// (its CON notification of /5/0/3 or /5/0/5, which a simulator may send
	// with both values) may have left the device before the server's last
	// request reached it: in DOWNLOADED, the State 2 of the download's end,
	// which crossed the Execute on the way.
	//
	// An answer says nothing of the requests that reached the device after
	// it left: only the answer to a read sent after the last Execute (its
	// tag is the generation that Execute started, see readFotaObject) may
	// send the Execute again. A read sent before it (a probe's in
	// DOWNLOADING, or an earlier recovery's while the store failed writes)
	// may have been answered before the Execute arrived (issue 22,
	// crossed_object_reads.txt).
	objectRead := f.State != nil && f.UpdateResult != nil && d.in.GetNoAck()
	if st == stDownloaded && objectRead && d.in.GetRequestTag() == d.s.Generation && d.s.Generation != 0 &&
		f.GetState() == messages.FotaStateDownloaded && f.GetUpdateResult() == messages.UpdateResultInitial {
		d.executeAgain()
		return
	}
	if f.UpdateResult != nil {
		res := f.GetUpdateResult()
		if r, failed := UpdateResultReason(res); failed && f.GetState() != messages.FotaStateUpdating {
			d.fail(r, fmt.Sprintf("update result %d", res), res)
			return
		}
		if res == messages.UpdateResultSuccess && (st == stDownloaded || st == stUpgrading) && f.GetState() == messages.FotaStateIdle {
			d.updated()
			return
		}
		if res == messages.UpdateResultDeferred && st == stDownloaded {
			// The device took the Execute and put the update off (spec
			// 3.6): the result is waited for within T9, not T8.
			d.note("update deferred by the device (Update Result 11): waiting for the result")
			d.enter(stUpgrading, d.at.Add(d.cfg.UpdateResult), 0)
			return
		}
		if res == messages.UpdateResultInitial && objectRead && f.GetState() == messages.FotaStateIdle && (st == stNotified || st == stDownloading) {
			// Idle with no result while its download is due: the device
			// lost the URI (a reboot that kept nothing). Only now is the
			// URI written again: a device that still holds it resumes by
			// itself, and a client refuses the write while it downloads.
			d.note("the device shows State 0, Update Result 0: it lost the package URI; written again")
			for _, dl := range packageURIWrites(d.s) {
				d.resend(dl)
			}
			return
		}
	}
	if f.State == nil {
		return
	}
	switch state := f.GetState(); {
	case state == messages.FotaStateDownloading && st == stNotified:
		d.enter(stDownloading, d.fotaWaitDeadline(stDownloading, d.s.NotifiedAt), 0)
	case state == messages.FotaStateDownloaded && (st == stNotified || st == stDownloading):
		d.send(&messages.Downlink{Kind: &messages.Downlink_Lwm2MExecute{Lwm2MExecute: &messages.Lwm2MExecute{Path: messages.PathUpdate}}})
		d.enter(stDownloaded, d.at.Add(d.cfg.UpdateStart), 0)
	case state == messages.FotaStateUpdating && (st == stDownloading || st == stDownloaded):
		d.enter(stUpgrading, d.at.Add(d.cfg.UpdateResult), 0)
	case state == messages.FotaStateIdle && (st == stDownloading || st == stUpgrading) && f.UpdateResult == nil:
		// Back to idle without the result in the same message: read it.
		d.send(read(messages.PathUpdateResult))
	}
}

// A FOTA job waiting for object 5 to change, from the notification to the
// end of the download, probes the device now and then (probeDownload):
// in NOTIFIED once, half way through T5; in DOWNLOADING every sixth of T6
// (10 minutes of the default 60). Both timeouts count from the
// notification.
const (
	probesNotified    = 2
	probesDownloading = 6
)

// fotaWaitEnd is when T5 (NOTIFIED) or T6 (DOWNLOADING) ends the job.
func (d *decider) fotaWaitEnd(stage messages.Stage) time.Time {
	if stage == stNotified {
		return d.s.NotifiedAt.Add(d.cfg.DownloadStart)
	}
	return d.s.NotifiedAt.Add(d.cfg.Download)
}

// fotaWaitDeadline is the deadline of a FOTA job entering stage
// (NOTIFIED, DOWNLOADING) now: its next probe, or the stage's timeout
// when that comes first. notifiedAt is the notification's time (for
// NOTIFIED, now).
func (d *decider) fotaWaitDeadline(stage messages.Stage, notifiedAt time.Time) time.Time {
	timeout, parts := d.cfg.Download, time.Duration(probesDownloading)
	if stage == stNotified {
		timeout, parts = d.cfg.DownloadStart, probesNotified
	}
	end := notifiedAt.Add(timeout)
	if probe := d.at.Add(timeout / parts); probe.Before(end) {
		return probe
	}
	return end
}

// probeDownload is a FOTA job's probe in NOTIFIED or DOWNLOADING (its
// deadline fired before the stage's timeout): it asks a device that took
// the package URI where it is, with a read of object 5 (State and Update
// Result in one answer) and new observations of /5/0/3 and /5/0/5, as on a
// new registration (owed). Nothing else tells the server of a notification
// lost for good: a device whose confirmable notification goes
// unacknowledged through all its retransmissions (every copy lost, or an
// acknowledgement that comes too late) ends that observation (RFC 7641
// 4.5) and reports nothing more, neither State 1 or 2 nor a failed
// download. The read's answer moves the job on (State 1: DOWNLOADING,
// State 2: Execute), fails it with the device's Update Result (4:
// connection lost), or writes the URI again (State 0, Update Result 0).
// A device that has not acknowledged the URI is not asked (its object 5
// shows the previous attempt's state): in NOTIFIED the observations and
// the URI's writes (packageURIWrites: the reset first, unless the device
// held the URI before) go again instead, as on a new registration, since
// each may have been lost through all the server's retransmissions. Then
// the stage's timeout counts on, the next probe armed before it.
func (d *decider) probeDownload() {
	st := d.s.Stage
	since := d.at.Sub(d.s.NotifiedAt).Round(time.Second)
	switch {
	case d.s.UriAcked:
		d.note(fmt.Sprintf("%s for %v: object 5 read and observed again", shortStage(st), since))
		d.sendOnce(readFotaObject(d.s))
		d.sendOnce(observe(messages.PathFotaState)) // once: a queue-mode device may sleep through several probes
		d.sendOnce(observe(messages.PathUpdateResult))
	case st == stNotified:
		d.note(fmt.Sprintf("%s for %v: the package URI is not acknowledged; object 5 observed and the URI written again", shortStage(st), since))
		d.sendOnce(observe(messages.PathFotaState))
		d.sendOnce(observe(messages.PathUpdateResult))
		for _, dl := range packageURIWrites(d.s) {
			d.resend(dl)
		}
	}
	d.enter(st, d.fotaWaitDeadline(st, d.s.NotifiedAt), 0)
}

// executeAgain sends the Execute again to a device that never took it.
// Resume reads the whole object 5 instance (messages.PathFotaObject) of a device
// whose Execute was journaled but may never have left the old process, and
// so does a new registration in DOWNLOADED (the Execute may have gone to
// the old session); only that read answers State and Update Result in one
// value. State 2 with Update Result
// 0 is a device that has not started updating: a device moves to State 3
// when it accepts an Execute, before it answers (OMA object 5; State 2 after
// a failed or deferred update carries Update Result 8 or 11), so this one
// never took the first Execute, and a second one cannot install twice. The
// Execute of a process that died reaches the device before the new
// process's read, if ever. Only the answer to a read sent after the last
// Execute counts (its tag is the current generation; fotaStatus checks
// it), and this Execute starts a new generation, so the answers of reads
// sent before it, which may show State 2 still, send nothing. T8 counts
// again from the new Execute.
func (d *decider) executeAgain() {
	d.note("the device shows State 2, Update Result 0: it never took the Execute; sent again")
	d.send(&messages.Downlink{Kind: &messages.Downlink_Lwm2MExecute{Lwm2MExecute: &messages.Lwm2MExecute{Path: messages.PathUpdate}}})
	d.enter(stDownloaded, d.at.Add(d.cfg.UpdateStart), 0)
}

// updated: Update Result 1. Read the version (verify); with the product
// option skip_version_check its answer is only noted (uncheckedVersion).
func (d *decider) updated() { d.verify(causeResult) }

// ---- LwM2M SOTA over PCP (spec 4.5, 4.9) ----

func pcpNotify(p *messages.Package) *messages.Downlink {
	return &messages.Downlink{Kind: &messages.Downlink_PcpNotifyNewVersion{PcpNotifyNewVersion: &messages.PcpNotifyNewVersion{
		Version: p.GetVersion(), SegmentSize: p.GetSegmentSize(), SegmentCount: uint32(segmentCount(p)), CheckCode: p.GetCheckCode(),
	}}}
}

func (d *decider) pcpJob() bool { return d.s.Job != nil && d.proto() == protoPCP }

func (d *decider) pcpVersion(v *messages.PcpVersion) {
	if !d.pcpJob() {
		return
	}
	if v.GetResult() == messages.PcpResultOK {
		ver := v.GetVersion()
		d.recordVersion(nil, &ver)
	}
	if d.s.Stage != stVersion && d.s.Stage != stVerifying {
		return
	}
	if code := int32(v.GetResult()); code != messages.PcpResultOK {
		d.fail(DeviceCodeReason(code), "0x13 answered with an error", code)
		return
	}
	if d.s.Stage == stVersion {
		d.decideVersion(v.GetVersion())
	} else {
		d.verified(v.GetVersion())
	}
}

func (d *decider) pcpNotifyResponse(result uint32) {
	if !d.pcpJob() || (d.s.Stage != stNotified && d.s.Stage != stDownloading) {
		return
	}
	switch result {
	case messages.PcpResultOK:
		// Accepted; segment requests follow.
	case messages.PcpResultAlreadyLatest:
		d.verify(causeAlreadyLatest)
	default:
		d.fail(DeviceCodeReason(int32(result)), "0x14 refused", int32(result))
	}
}

func (d *decider) pcpSegmentResponse(result, seg uint32) {
	r := &messages.PcpSegmentResponse{Result: result, SegmentNo: seg}
	if result == messages.PcpResultOK {
		r.PackageId = d.s.Job.GetPackage().GetPackageId()
		r.SegmentSize = d.s.Job.GetPackage().GetSegmentSize()
	}
	d.send(&messages.Downlink{Kind: &messages.Downlink_PcpSegmentResponse{PcpSegmentResponse: r}})
}

func (d *decider) pcpSegmentRequest(r *messages.PcpSegmentRequest) {
	if !d.pcpJob() || d.s.Stage < stNotified || d.s.Stage > stDownloaded || r.GetVersion() != d.target() {
		d.pcpSegmentResponse(messages.PcpResultNoSuchTask, r.GetSegmentNo())
		return
	}
	if int64(r.GetSegmentNo()) >= segmentCount(d.s.Job.GetPackage()) {
		d.pcpSegmentResponse(messages.PcpResultNoSuchSegment, r.GetSegmentNo())
		return
	}
	if d.s.Stage == stNotified {
		// A 0x15 implies acceptance of the 0x14 (spec 4.5); T6 runs from the notification.
		d.enter(stDownloading, d.s.NotifiedAt.Add(d.cfg.Download), 0)
	}
	d.pcpSegmentResponse(messages.PcpResultOK, r.GetSegmentNo())
}

func (d *decider) pcpAck(m proto.Message) {
	switch a := m.(type) {
	case *messages.PcpDownloadResultAck:
		d.send(&messages.Downlink{Kind: &messages.Downlink_PcpDownloadResultAck{PcpDownloadResultAck: a}})
	case *messages.PcpUpgradeResultAck:
		d.send(&messages.Downlink{Kind: &messages.Downlink_PcpUpgradeResultAck{PcpUpgradeResultAck: a}})
	}
}

func (d *decider) pcpDownloadResult(status uint32) {
	if !d.pcpJob() || d.s.Stage < stNotified || d.s.Stage > stDownloaded {
		d.pcpAck(&messages.PcpDownloadResultAck{Result: messages.PcpResultNoSuchTask})
		return
	}
	d.pcpAck(&messages.PcpDownloadResultAck{Result: messages.PcpResultOK})
	if d.s.Stage == stDownloaded {
		// A duplicate: its acknowledgement's answer sends a 0x17 still
		// due, never one already sent.
		return
	}
	if status != messages.PcpResultOK {
		d.fail(DeviceCodeReason(int32(status)), "0x16 download result", int32(status))
		return
	}
	// The 0x17 is due but not sent: it would wait behind the
	// acknowledgement's write (a registration's requests run one at a
	// time), journaled but not on the wire for a whole device round trip,
	// and a crash then would lose it. It goes when the transport reports
	// the acknowledgement answered (lwm2mResponse), or when this deadline
	// (a request's, T2) fires, or at once after a restart (Resume).
	d.enterWith(&messages.StageEntered{Stage: stDownloaded, PcpExecuteDue: true}, d.at.Add(d.cfg.VersionReport))
}

func pcpExecuteRequest() *messages.Downlink {
	return &messages.Downlink{Kind: &messages.Downlink_PcpExecute{PcpExecute: &messages.PcpExecute{}}}
}

// pcpExecuteDue reports whether the job's 0x17 is due and was never sent.
func (d *decider) pcpExecuteDue() bool {
	return d.pcpJob() && d.s.Stage == stDownloaded && d.s.PcpExecuteDue
}

// pcpExecute sends the due 0x17 and journals that it did, arming T8: it is
// sent at most once (a device cannot tell us whether it took one).
func (d *decider) pcpExecute() {
	d.send(pcpExecuteRequest())
	d.enter(stDownloaded, d.at.Add(d.cfg.UpdateStart), 0)
}

func (d *decider) pcpExecuteResponse(result uint32) {
	if !d.pcpJob() || d.s.Stage != stDownloaded {
		return
	}
	if result != messages.PcpResultOK {
		d.fail(DeviceCodeReason(int32(result)), "0x17 refused", int32(result))
		return
	}
	d.enter(stUpgrading, d.at.Add(d.cfg.UpdateResult), 0)
}

func (d *decider) pcpUpgradeResult(r *messages.PcpUpgradeResult) {
	if !d.pcpJob() || d.s.Stage < stDownloaded {
		// A duplicate of the result we already accepted is acknowledged as
		// handled; anything else has no task (spec 4.5, 0x80).
		last := d.s.Last
		if d.s.Job == nil && last != nil && last.Protocol == protoPCP && last.Outcome.GetStatus() != statusStopped {
			d.pcpAck(&messages.PcpUpgradeResultAck{Result: messages.PcpResultOK})
		} else {
			d.pcpAck(&messages.PcpUpgradeResultAck{Result: messages.PcpResultNoSuchTask})
		}
		return
	}
	d.pcpAck(&messages.PcpUpgradeResultAck{Result: messages.PcpResultOK})
	ver := r.GetVersion()
	if code := int32(r.GetResult()); code != messages.PcpResultOK {
		d.fail(DeviceCodeReason(code), "0x18 upgrade result", code)
		return
	}
	d.recordVersion(nil, &ver)
	switch {
	case d.s.Job.GetSkipVersionCheck():
		d.note("version check skipped (product option skip_version_check)")
		d.succeed(messages.Reason_REASON_NONE, "")
	case ver == d.target():
		d.succeed(messages.Reason_REASON_NONE, "")
	default:
		d.fail(messages.Reason_REASON_VERSION_MISMATCH, fmt.Sprintf("0x18 reports %q, target %q", ver, d.target()), 0)
	}
}
