package devicefsm

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

var timeZero time.Time

// Stage shorthands.
const (
	stIdle        = messages.Stage_STAGE_IDLE
	stWaitOnline  = messages.Stage_STAGE_WAIT_ONLINE
	stVersion     = messages.Stage_STAGE_VERSION_QUERY
	stRadio       = messages.Stage_STAGE_RADIO_QUERY
	stCell        = messages.Stage_STAGE_CELL_QUERY
	stWaitPermit  = messages.Stage_STAGE_WAIT_PERMIT
	stNotified    = messages.Stage_STAGE_NOTIFIED
	stDownloading = messages.Stage_STAGE_DOWNLOADING
	stDownloaded  = messages.Stage_STAGE_DOWNLOADED
	stUpgrading   = messages.Stage_STAGE_UPGRADING
	stVerifying   = messages.Stage_STAGE_VERIFYING

	protoMQTT = messages.Protocol_PROTOCOL_MQTT
	protoFOTA = messages.Protocol_PROTOCOL_LWM2M_FOTA
	protoPCP  = messages.Protocol_PROTOCOL_LWM2M_PCP

	causeResult        = messages.VerifyCause_VERIFY_CAUSE_RESULT
	causeResultTimeout = messages.VerifyCause_VERIFY_CAUSE_RESULT_TIMEOUT
	causeAlreadyLatest = messages.VerifyCause_VERIFY_CAUSE_ALREADY_LATEST

	statusSuccess = messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS
	statusFail    = messages.SubtaskStatus_SUBTASK_STATUS_FAIL
	statusStopped = messages.SubtaskStatus_SUBTASK_STATUS_STOPPED
)

// decider accumulates the events and effects of one Step. Every event is
// applied to s as soon as it is emitted, so later decisions see its effect and
// the returned state is exactly the fold of Evolve over the returned events.
type decider struct {
	cfg Config
	s   State
	at  time.Time
	in  *messages.DeviceInput
	res Result
	// srcVer is the version decideVersion compared in this step, carried by
	// the event that ends the check (StageEntered or JobFinished).
	srcVer string
}

func (d *decider) emit(e *messages.DeviceEvent) {
	e.AtUnixNano = messages.UnixNano(d.at)
	d.s = Evolve(d.s, e)
	d.res.Events = append(d.res.Events, e)
}

func (d *decider) effect(e *messages.DeviceEffect) { d.res.Effects = append(d.res.Effects, e) }

// send delivers a downlink now when the device is reachable, or queues it.
func (d *decider) send(dl *messages.Downlink) {
	dl.DeviceId = d.s.DeviceID
	if d.s.Reachable() {
		d.effect(&messages.DeviceEffect{Kind: &messages.DeviceEffect_Downlink{Downlink: dl}})
		return
	}
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_DownlinkQueued{DownlinkQueued: &messages.DownlinkQueued{Downlink: dl}}})
}

// flush sends every queued downlink once the device is reachable.
func (d *decider) flush() {
	if !d.s.Reachable() || len(d.s.Outbox) == 0 {
		return
	}
	out := d.s.Outbox
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_OutboxFlushed{OutboxFlushed: &messages.OutboxFlushed{}}})
	for _, dl := range out {
		d.effect(&messages.DeviceEffect{Kind: &messages.DeviceEffect_Downlink{Downlink: dl}})
	}
}

// sendOnce sends dl unless an identical downlink is already queued or was just
// sent in this step (a flushed outbox).
func (d *decider) sendOnce(dl *messages.Downlink) {
	dl.DeviceId = d.s.DeviceID
	for _, q := range d.s.Outbox {
		if proto.Equal(q, dl) {
			return
		}
	}
	for _, e := range d.res.Effects {
		if q := e.GetDownlink(); q != nil && proto.Equal(q, dl) {
			return
		}
	}
	d.send(dl)
}

// enter moves the job to stage; a positive timeout arms a deadline at at+timeout,
// an absolute non-zero deadline is kept as given.
func (d *decider) enter(stage messages.Stage, deadline time.Time, cause messages.VerifyCause) {
	d.enterWith(&messages.StageEntered{Stage: stage, VerifyCause: cause}, deadline)
}

// enterWith is enter with more fields of the StageEntered event set.
func (d *decider) enterWith(ev *messages.StageEntered, deadline time.Time) {
	ev.SourceVersion = d.srcVer
	d.srcVer = ""
	if !deadline.IsZero() {
		ev.DeadlineUnixNano = messages.UnixNano(deadline)
		ev.Generation = d.s.Generation + 1
	}
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_StageEntered{StageEntered: ev}})
	if !deadline.IsZero() {
		d.effect(armEffect(d.s))
	}
}

func armEffect(s State) *messages.DeviceEffect {
	return &messages.DeviceEffect{Kind: &messages.DeviceEffect_ArmDeadline{ArmDeadline: &messages.ArmDeadline{
		Step:       DeadlineStep(s.Stage),
		Generation: s.Generation,
		AtUnixNano: messages.UnixNano(s.Deadline),
	}}}
}

// downloadServed notes package bytes the server sent to the running job
// (timeline: how far the download got, and where a resume started). Bytes
// served to an earlier job are ignored.
func (d *decider) downloadServed(v *messages.DownloadServed) {
	if d.s.Job == nil || d.s.Job.GetTaskId() != v.GetTaskId() || d.s.Job.GetAttempt() != v.GetAttempt() {
		return
	}
	end := v.GetOffset() + v.GetBytes()
	d.note(fmt.Sprintf("package bytes %d-%d of %d served (%d%%)", v.GetOffset(), end-1, v.GetSize(), end*100/v.GetSize()))
}

// downloadOffered journals where a transport told the running job's device
// to download its package (timeline: the URI, its token masked unless asked
// for). An offer made for an earlier job is ignored.
func (d *decider) downloadOffered(v *messages.DownloadOffered) {
	if d.s.Job == nil || d.s.Job.GetTaskId() != v.GetTaskId() || d.s.Job.GetAttempt() != v.GetAttempt() {
		return
	}
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_DownloadOffered{DownloadOffered: &messages.DownloadOffered{
		TaskId: v.GetTaskId(), Attempt: v.GetAttempt(), Uri: v.GetUri(), Token: v.GetToken(),
	}}})
}

func (d *decider) note(text string) {
	d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_Noted{Noted: &messages.Noted{Text: text}}})
}

// Step feeds one input to the device. It returns the new state and what the
// caller must persist and do, or an error wrapping ErrInvalidInput (and the
// unchanged state) when the input is malformed. Inputs that are valid but
// pointless now (a stale deadline, a duplicate or late report) are ignored:
// no events, no effects.
func Step(cfg Config, s State, in *messages.DeviceInput) (State, Result, error) {
	if err := validate(s, in); err != nil {
		return s, Result{}, err
	}
	d := &decider{cfg: cfg, s: s, at: messages.Time(in.GetAtUnixNano()), in: in}
	switch k := in.Kind.(type) {
	case *messages.DeviceInput_StartJob:
		j := k.StartJob.GetJob()
		if err := ValidatePackage(j.GetTaskType(), j.GetProtocol(), j.GetPackage()); err != nil {
			// A job the machine cannot run still ends: its task hears the
			// refusal, so no sub-task waits for an outcome that never comes.
			d.reject(j, messages.Reason_REASON_INVALID_JOB, err.Error())
			break
		}
		d.startJob(j)
	case *messages.DeviceInput_StopJob:
		d.stopJob(k.StopJob.GetTaskId())
	case *messages.DeviceInput_PermitGranted:
		d.permitGranted(k.PermitGranted.GetCellId())
	case *messages.DeviceInput_DeadlineFired:
		d.deadlineFired(k.DeadlineFired)
	case *messages.DeviceInput_SetAbnormal:
		if s.Abnormal != k.SetAbnormal.GetAbnormal() {
			d.emit(&messages.DeviceEvent{Kind: &messages.DeviceEvent_AbnormalChanged{AbnormalChanged: &messages.AbnormalChanged{Abnormal: k.SetAbnormal.GetAbnormal()}}})
		}
	case *messages.DeviceInput_Connected:
		d.connected(k.Connected.GetQueueMode())
	case *messages.DeviceInput_Disconnected:
		if s.Online || s.Awake {
			d.presence(false, false, s.QueueMode)
		}
	case *messages.DeviceInput_Uplink:
		d.uplink(k.Uplink.GetRegistrationUpdate())
	case *messages.DeviceInput_Asleep:
		if s.QueueMode && s.Awake {
			d.presence(s.Online, false, true)
		}
	case *messages.DeviceInput_VersionReported:
		d.reportArrived()
		d.versionReported(k.VersionReported)
	case *messages.DeviceInput_RadioReported:
		d.reportArrived()
		d.radioReported(k.RadioReported)
	case *messages.DeviceInput_Lwm2MResponse:
		d.reportArrived()
		d.lwm2mResponse(k.Lwm2MResponse)
	case *messages.DeviceInput_FotaStatus:
		d.reportArrived()
		d.fotaStatus(k.FotaStatus)
	case *messages.DeviceInput_MqttProgress:
		d.reportArrived()
		d.mqttProgress(k.MqttProgress)
	case *messages.DeviceInput_PcpVersion:
		d.reportArrived()
		d.pcpVersion(k.PcpVersion)
	case *messages.DeviceInput_PcpNotifyResponse:
		d.reportArrived()
		d.pcpNotifyResponse(k.PcpNotifyResponse.GetResult())
	case *messages.DeviceInput_PcpSegmentRequest:
		d.reportArrived()
		d.pcpSegmentRequest(k.PcpSegmentRequest)
	case *messages.DeviceInput_PcpDownloadResult:
		d.reportArrived()
		d.pcpDownloadResult(k.PcpDownloadResult.GetStatus())
	case *messages.DeviceInput_PcpExecuteResponse:
		d.reportArrived()
		d.pcpExecuteResponse(k.PcpExecuteResponse.GetResult())
	case *messages.DeviceInput_PcpUpgradeResult:
		d.reportArrived()
		d.pcpUpgradeResult(k.PcpUpgradeResult)
	case *messages.DeviceInput_DownloadServed:
		d.downloadServed(k.DownloadServed)
	case *messages.DeviceInput_DownloadOffered:
		d.downloadOffered(k.DownloadOffered)
	}
	return d.s, d.res, nil
}

func validate(s State, in *messages.DeviceInput) error {
	if in == nil || in.Kind == nil {
		return fmt.Errorf("%w: input has no kind", ErrInvalidInput)
	}
	if in.GetAtUnixNano() <= 0 {
		return fmt.Errorf("%w: at_unix_nano must be set", ErrInvalidInput)
	}
	switch k := in.Kind.(type) {
	case *messages.DeviceInput_StartJob:
		if id := k.StartJob.GetDeviceId(); id != "" && id != s.DeviceID {
			return fmt.Errorf("%w: start_job.device_id %q is not this device (%q)", ErrInvalidInput, id, s.DeviceID)
		}
		return validateJob(k.StartJob.GetJob())
	case *messages.DeviceInput_StopJob:
		if k.StopJob.GetTaskId() == "" {
			return fmt.Errorf("%w: stop_job.task_id is empty", ErrInvalidInput)
		}
	case *messages.DeviceInput_PermitGranted:
		if k.PermitGranted.GetCellId() == "" {
			return fmt.Errorf("%w: permit_granted.cell_id is empty", ErrInvalidInput)
		}
	case *messages.DeviceInput_DeadlineFired:
		if k.DeadlineFired.GetStep() == "" {
			return fmt.Errorf("%w: deadline_fired.step is empty", ErrInvalidInput)
		}
	case *messages.DeviceInput_VersionReported:
		v := k.VersionReported
		if v.FwVersion == nil && v.SwVersion == nil {
			return fmt.Errorf("%w: version_reported has neither fw_version nor sw_version", ErrInvalidInput)
		}
	case *messages.DeviceInput_FotaStatus:
		f := k.FotaStatus
		if f.State == nil && f.UpdateResult == nil {
			return fmt.Errorf("%w: fota_status has neither state nor update_result", ErrInvalidInput)
		}
		if f.State != nil && (f.GetState() < 0 || f.GetState() > 3) {
			return fmt.Errorf("%w: fota_status.state %d is outside 0..3", ErrInvalidInput, f.GetState())
		}
		if f.UpdateResult != nil && f.GetUpdateResult() < 0 {
			return fmt.Errorf("%w: fota_status.update_result %d is negative", ErrInvalidInput, f.GetUpdateResult())
		}
	case *messages.DeviceInput_MqttProgress:
		if p := k.MqttProgress; p.Progress != nil && (p.GetProgress() < 0 || p.GetProgress() > 100) {
			return fmt.Errorf("%w: mqtt_progress.progress %d is outside 0..100", ErrInvalidInput, p.GetProgress())
		}
	case *messages.DeviceInput_DownloadServed:
		if v := k.DownloadServed; v.GetOffset() < 0 || v.GetBytes() <= 0 || v.GetSize() <= 0 || v.GetOffset()+v.GetBytes() > v.GetSize() {
			return fmt.Errorf("%w: download_served: bytes %d at %d of %d", ErrInvalidInput, v.GetBytes(), v.GetOffset(), v.GetSize())
		}
	case *messages.DeviceInput_DownloadOffered:
		if k.DownloadOffered.GetUri() == "" {
			return fmt.Errorf("%w: download_offered.uri is empty", ErrInvalidInput)
		}
	case *messages.DeviceInput_Lwm2MResponse:
		if k.Lwm2MResponse.GetPath() == "" {
			return fmt.Errorf("%w: lwm2m_response.path is empty", ErrInvalidInput)
		}
	case *messages.DeviceInput_PcpVersion, *messages.DeviceInput_PcpNotifyResponse, *messages.DeviceInput_PcpSegmentRequest,
		*messages.DeviceInput_PcpDownloadResult, *messages.DeviceInput_PcpExecuteResponse, *messages.DeviceInput_PcpUpgradeResult:
		if err := validatePCPCodes(in); err != nil {
			return err
		}
	}
	return nil
}

func validatePCPCodes(in *messages.DeviceInput) error {
	var code uint32
	switch k := in.Kind.(type) {
	case *messages.DeviceInput_PcpVersion:
		code = k.PcpVersion.GetResult()
	case *messages.DeviceInput_PcpNotifyResponse:
		code = k.PcpNotifyResponse.GetResult()
	case *messages.DeviceInput_PcpDownloadResult:
		code = k.PcpDownloadResult.GetStatus()
	case *messages.DeviceInput_PcpExecuteResponse:
		code = k.PcpExecuteResponse.GetResult()
	case *messages.DeviceInput_PcpUpgradeResult:
		code = k.PcpUpgradeResult.GetResult()
	case *messages.DeviceInput_PcpSegmentRequest:
		if k.PcpSegmentRequest.GetSegmentNo() > 0xFFFF {
			return fmt.Errorf("%w: pcp_segment_request.segment_no %d exceeds a WORD", ErrInvalidInput, k.PcpSegmentRequest.GetSegmentNo())
		}
	}
	if code > 0xFF {
		return fmt.Errorf("%w: PCP result code %d exceeds a BYTE", ErrInvalidInput, code)
	}
	return nil
}

// validateJob checks what identifies a job: without it no task can be told
// the job's outcome, so Step refuses the input. What the job asks of the
// device (ValidatePackage) is checked by Step, which rejects a job it cannot
// run with its outcome.
func validateJob(j *messages.Job) error {
	switch {
	case j == nil:
		return fmt.Errorf("%w: start_job.job is missing", ErrInvalidInput)
	case j.GetTaskId() == "":
		return fmt.Errorf("%w: job.task_id is empty", ErrInvalidInput)
	case j.GetAttempt() == 0:
		return fmt.Errorf("%w: job.attempt must be at least 1", ErrInvalidInput)
	}
	return nil
}

// ValidatePackage reports why a job of task type tt over protocol p cannot
// install pkg, or nil when it can: an upgrade task type its flow carries, a
// package version, and for PCP a package PCP can describe (segment size,
// segment count and check code within their WORDs, a version within 16
// bytes; spec 4.5). Step rejects such a job with REASON_INVALID_JOB and
// this error as detail; the API refuses such a task when it is created. The
// error is a sentence about the job, without a package prefix.
func ValidatePackage(tt messages.TaskType, p messages.Protocol, pkg *messages.Package) error {
	switch {
	case pkg == nil:
		return errors.New("the job has no package")
	case pkg.GetVersion() == "":
		return errors.New("the package has no version")
	}
	if tt != messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE && tt != messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE {
		return fmt.Errorf("task type %v is not an upgrade", tt)
	}
	switch p {
	case protoMQTT:
	case protoFOTA:
		if tt != messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE {
			return fmt.Errorf("LwM2M FOTA carries firmware only, not %v", tt)
		}
	case protoPCP:
		if tt != messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE {
			return fmt.Errorf("PCP carries software only, not %v", tt)
		}
		if ss := pkg.GetSegmentSize(); ss < messages.PcpMinSegmentSize || ss > messages.PcpMaxSegmentSize {
			return fmt.Errorf("the package's PCP segment size %d is outside %d..%d", ss, messages.PcpMinSegmentSize, messages.PcpMaxSegmentSize)
		}
		if pkg.GetSize() <= 0 {
			return errors.New("the package is empty, and PCP sends at least one segment")
		}
		if n := segmentCount(pkg); n > messages.PcpMaxSegments {
			return fmt.Errorf("the package needs %d PCP segments of %d bytes, more than PCP counts (%d: at most %d bytes)",
				n, pkg.GetSegmentSize(), messages.PcpMaxSegments, int64(messages.PcpMaxSegments)*int64(pkg.GetSegmentSize()))
		}
		if len(pkg.GetVersion()) > messages.PcpVersionLen {
			return fmt.Errorf("the package version %q is longer than PCP's %d bytes", pkg.GetVersion(), messages.PcpVersionLen)
		}
		if pkg.GetCheckCode() > 0xFFFF {
			return fmt.Errorf("the package's PCP check code %d exceeds a WORD", pkg.GetCheckCode())
		}
	default:
		return fmt.Errorf("protocol %v is not a device flow", p)
	}
	return nil
}

func segmentCount(p *messages.Package) int64 {
	ss := int64(p.GetSegmentSize())
	if ss == 0 {
		return 0
	}
	return (p.GetSize() + ss - 1) / ss
}
