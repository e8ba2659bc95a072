package devicefsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/otafleet/otafleet/messages"
)

// ErrInvalidSnapshot: FromSnapshot was given a snapshot that is not a
// device state (a missing message or field, an unknown enum value, fields
// that contradict each other).
var ErrInvalidSnapshot = errors.New("devicefsm: invalid snapshot")

// Snapshot encodes the complete state s. Recovery may start from
// FromSnapshot of it and fold only the events journaled afterwards. The
// snapshot shares the job, outbox and outcome messages with s: treat it as
// read-only (marshal it).
func Snapshot(s State) *messages.DeviceSnapshot {
	p := &messages.DeviceSnapshot{
		DeviceId:           s.DeviceID,
		Online:             s.Online,
		Awake:              s.Awake,
		QueueMode:          s.QueueMode,
		Abnormal:           s.Abnormal,
		RadioCellId:        s.Radio.CellID,
		Job:                s.Job,
		Stage:              s.Stage,
		DeadlineUnixNano:   messages.UnixNano(s.Deadline),
		Generation:         s.Generation,
		VerifyCause:        s.VerifyCause,
		NotifiedAtUnixNano: messages.UnixNano(s.NotifiedAt),
		Progress:           s.Progress,
		UriAcked:           s.UriAcked,
		UriHeld:            s.UriHeld,
		PermitCell:         s.PermitCell,
		PermitHeld:         s.PermitHeld,
		PermitCellOnly:     s.PermitCellOnly,
		Outbox:             s.Outbox,
		SourceVersion:      s.SourceVersion,
		PcpExecuteDue:      s.PcpExecuteDue,
	}
	if s.HasFw {
		p.FwVersion = &s.FwVersion
	}
	if s.HasSw {
		p.SwVersion = &s.SwVersion
	}
	if s.Radio.HasRSRP {
		p.Rsrp = &s.Radio.RSRP
	}
	if s.Radio.HasSINR {
		p.Sinr = &s.Radio.SINR
	}
	if s.Last != nil {
		p.Last = &messages.DeviceSnapshot_Last{
			Outcome:    s.Last.Outcome,
			Protocol:   s.Last.Protocol,
			PermitCell: s.Last.PermitCell,
		}
	}
	return p
}

// FromSnapshot decodes a snapshot made by Snapshot. It rejects, with an error
// wrapping ErrInvalidSnapshot, a nil snapshot, an empty device ID, unknown
// enum values, an invalid job, job fields set on an idle device, an empty
// downlink and an outcome that is missing or names another device. The
// returned State shares p's messages: do not modify p afterwards.
func FromSnapshot(p *messages.DeviceSnapshot) (State, error) {
	if err := checkSnapshot(p); err != nil {
		return State{}, err
	}
	s := State{
		DeviceID:  p.GetDeviceId(),
		Online:    p.GetOnline(),
		Awake:     p.GetAwake(),
		QueueMode: p.GetQueueMode(),
		Abnormal:  p.GetAbnormal(),
		FwVersion: p.GetFwVersion(), HasFw: p.FwVersion != nil,
		SwVersion: p.GetSwVersion(), HasSw: p.SwVersion != nil,
		Radio: Radio{
			RSRP: p.GetRsrp(), HasRSRP: p.Rsrp != nil,
			SINR: p.GetSinr(), HasSINR: p.Sinr != nil,
			CellID: p.GetRadioCellId(),
		},
		Job:            p.GetJob(),
		Stage:          p.GetStage(),
		Deadline:       messages.Time(p.GetDeadlineUnixNano()),
		Generation:     p.GetGeneration(),
		VerifyCause:    p.GetVerifyCause(),
		NotifiedAt:     messages.Time(p.GetNotifiedAtUnixNano()),
		Progress:       p.GetProgress(),
		UriAcked:       p.GetUriAcked(),
		UriHeld:        p.GetUriHeld(),
		PermitCell:     p.GetPermitCell(),
		PermitHeld:     p.GetPermitHeld(),
		PermitCellOnly: p.GetPermitCellOnly(),
		Outbox:         p.GetOutbox(),
		SourceVersion:  p.GetSourceVersion(),
		PcpExecuteDue:  p.GetPcpExecuteDue(),
	}
	if l := p.GetLast(); l != nil {
		s.Last = &Last{Outcome: l.GetOutcome(), Protocol: l.GetProtocol(), PermitCell: l.GetPermitCell()}
	}
	return s, nil
}

func invalidSnapshot(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidSnapshot}, args...)...)
}

func checkSnapshot(p *messages.DeviceSnapshot) error {
	if p == nil {
		return invalidSnapshot("snapshot is nil")
	}
	if p.GetDeviceId() == "" {
		return invalidSnapshot("device_id is empty")
	}
	if _, ok := messages.Stage_name[int32(p.GetStage())]; !ok {
		return invalidSnapshot("stage %d is unknown", p.GetStage())
	}
	if _, ok := messages.VerifyCause_name[int32(p.GetVerifyCause())]; !ok {
		return invalidSnapshot("verify_cause %d is unknown", p.GetVerifyCause())
	}
	if j := p.GetJob(); j != nil {
		if err := checkSnapshotJob(j); err != nil {
			return err
		}
	} else if p.GetStage() != stIdle || p.GetDeadlineUnixNano() != 0 || p.GetVerifyCause() != 0 ||
		p.GetNotifiedAtUnixNano() != 0 || p.GetProgress() != 0 || p.GetUriAcked() || p.GetUriHeld() ||
		p.GetPermitCell() != "" || p.GetPermitHeld() || p.GetPermitCellOnly() || p.GetPcpExecuteDue() {
		return invalidSnapshot("an idle device (no job) has job fields set (stage %v)", p.GetStage())
	}
	if p.GetPcpExecuteDue() && (p.GetJob().GetProtocol() != protoPCP || p.GetStage() != stDownloaded) {
		return invalidSnapshot("pcp_execute_due outside a PCP job's stage DOWNLOADED (%v, %v)", p.GetJob().GetProtocol(), p.GetStage())
	}
	if p.GetPermitCell() == "" && (p.GetPermitHeld() || p.GetPermitCellOnly()) {
		return invalidSnapshot("permit_held or permit_cell_only without permit_cell")
	}
	for i, dl := range p.GetOutbox() {
		if dl.GetKind() == nil {
			return invalidSnapshot("outbox[%d] has no kind", i)
		}
	}
	if l := p.GetLast(); l != nil {
		o := l.GetOutcome()
		switch {
		case o == nil:
			return invalidSnapshot("last.outcome is missing")
		case o.GetDeviceId() != p.GetDeviceId():
			return invalidSnapshot("last.outcome.device_id %q is not device %q", o.GetDeviceId(), p.GetDeviceId())
		}
		if _, ok := messages.SubtaskStatus_name[int32(o.GetStatus())]; !ok {
			return invalidSnapshot("last.outcome.status %d is unknown", o.GetStatus())
		}
		if _, ok := messages.Reason_name[int32(o.GetReason())]; !ok {
			return invalidSnapshot("last.outcome.reason %d is unknown", o.GetReason())
		}
		if _, ok := messages.Protocol_name[int32(l.GetProtocol())]; !ok {
			return invalidSnapshot("last.protocol %d is unknown", l.GetProtocol())
		}
	}
	return nil
}

// checkSnapshotJob accepts the jobs StartJob accepts.
func checkSnapshotJob(j *messages.Job) error {
	if err := validateJob(j); err != nil {
		// validateJob words its errors as an input's: keep the text, not the sentinel.
		return invalidSnapshot("%s", strings.TrimPrefix(err.Error(), ErrInvalidInput.Error()+": "))
	}
	if err := ValidatePackage(j.GetTaskType(), j.GetProtocol(), j.GetPackage()); err != nil {
		return invalidSnapshot("job: %v", err)
	}
	return nil
}
