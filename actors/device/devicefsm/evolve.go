package devicefsm

import (
	"github.com/otafleet/otafleet/messages"
)

// Evolve applies one journaled event to s. It is total: a nil or unknown
// event leaves s unchanged. Step uses it live and recovery uses it on replay,
// so both arrive at the same state.
func Evolve(s State, e *messages.DeviceEvent) State {
	if e == nil {
		return s
	}
	switch k := e.Kind.(type) {
	case *messages.DeviceEvent_JobAccepted:
		s = withJob(s, k.JobAccepted.GetJob())
		// The outbox keeps what an earlier job left queued (a reset, a cancel).
	case *messages.DeviceEvent_StageEntered:
		if s.Job == nil {
			return s
		}
		ev := k.StageEntered
		if ev.GetStage() == messages.Stage_STAGE_NOTIFIED && s.Stage != messages.Stage_STAGE_NOTIFIED {
			s.NotifiedAt = messages.Time(e.GetAtUnixNano())
		}
		s.Stage = ev.GetStage()
		s.Deadline = messages.Time(ev.GetDeadlineUnixNano())
		if ev.GetGeneration() != 0 {
			s.Generation = ev.GetGeneration()
		}
		s.VerifyCause = ev.GetVerifyCause()
		s.PcpExecuteDue = ev.GetPcpExecuteDue()
		if v := ev.GetSourceVersion(); v != "" {
			s.SourceVersion = v
		}
	case *messages.DeviceEvent_PresenceChanged:
		s.Online = k.PresenceChanged.GetOnline()
		s.Awake = k.PresenceChanged.GetAwake()
		s.QueueMode = k.PresenceChanged.GetQueueMode()
	case *messages.DeviceEvent_AbnormalChanged:
		s.Abnormal = k.AbnormalChanged.GetAbnormal()
	case *messages.DeviceEvent_VersionRecorded:
		if k.VersionRecorded.FwVersion != nil {
			s.FwVersion, s.HasFw = k.VersionRecorded.GetFwVersion(), true
		}
		if k.VersionRecorded.SwVersion != nil {
			s.SwVersion, s.HasSw = k.VersionRecorded.GetSwVersion(), true
		}
	case *messages.DeviceEvent_RadioRecorded:
		r := k.RadioRecorded
		s.Radio = Radio{
			RSRP: r.GetRsrp(), HasRSRP: r.Rsrp != nil,
			SINR: r.GetSinr(), HasSINR: r.Sinr != nil,
			CellID: r.GetCellId(),
		}
	case *messages.DeviceEvent_DownlinkQueued:
		if dl := k.DownlinkQueued.GetDownlink(); dl != nil {
			s.Outbox = append(s.Outbox, dl)
		}
	case *messages.DeviceEvent_OutboxFlushed:
		s.Outbox = nil
	case *messages.DeviceEvent_PermitRequested:
		if s.Job != nil {
			s.PermitCell, s.PermitHeld = k.PermitRequested.GetCellId(), false
			s.PermitCellOnly = k.PermitRequested.GetCellOnly()
		}
	case *messages.DeviceEvent_PermitHeld:
		if s.Job != nil && s.PermitCell == k.PermitHeld.GetCellId() {
			s.PermitHeld = true
		}
	case *messages.DeviceEvent_PermitReleased:
		if s.PermitCell == k.PermitReleased.GetCellId() {
			s.PermitCell, s.PermitHeld, s.PermitCellOnly = "", false, false
		}
	case *messages.DeviceEvent_ProgressRecorded:
		if s.Job != nil {
			s.Progress = k.ProgressRecorded.GetProgress()
		}
	case *messages.DeviceEvent_PackageUriSent:
		s.UriAcked = false
	case *messages.DeviceEvent_PackageUriAccepted:
		if s.Job != nil {
			s.UriAcked, s.UriHeld = true, true
		}
	case *messages.DeviceEvent_JobFinished:
		if s.Job == nil {
			return s
		}
		f := k.JobFinished
		if v := f.GetSourceVersion(); v != "" {
			s.SourceVersion = v
		}
		s.Last = &Last{
			Outcome: &messages.ReportOutcome{
				TaskId:            s.Job.GetTaskId(),
				DeviceId:          s.DeviceID,
				Attempt:           s.Job.GetAttempt(),
				Status:            f.GetStatus(),
				Reason:            f.GetReason(),
				Detail:            f.GetDetail(),
				ResultCode:        f.GetResultCode(),
				SourceVersion:     s.SourceVersion,
				DeviceDescription: f.GetDeviceDescription(),
			},
			Protocol:   s.Job.GetProtocol(),
			PermitCell: s.PermitCell,
		}
		s = withJob(s, nil)
		s.Outbox = nil
	case *messages.DeviceEvent_JobRejected, *messages.DeviceEvent_Noted, *messages.DeviceEvent_DownloadOffered:
		// Timeline facts only.
	}
	return s
}

// withJob returns s with j as its job (nil: none) and every field that
// belongs to a job at its start value: stage, deadline, verify cause,
// notification time, progress, URI acknowledgement and hold, cell slot, source
// version and the due 0x17. Generation goes on counting (a deadline of an
// earlier job stays stale), and the outbox is the caller's.
func withJob(s State, j *messages.Job) State {
	s.Job = j
	s.Stage = messages.Stage_STAGE_IDLE
	s.Deadline = timeZero
	s.VerifyCause = messages.VerifyCause_VERIFY_CAUSE_UNSPECIFIED
	s.NotifiedAt = timeZero
	s.Progress = 0
	s.UriAcked, s.UriHeld = false, false
	s.PermitCell, s.PermitHeld, s.PermitCellOnly = "", false, false
	s.SourceVersion = ""
	s.PcpExecuteDue = false
	return s
}
