package rpc

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// Timeline entry kinds.
const (
	kindJob      = "job"      // a job was accepted
	kindStage    = "stage"    // the job entered a stage (with its deadline)
	kindReport   = "report"   // the device reported a value
	kindPresence = "presence" // the device came, went, slept or was marked abnormal
	kindPermit   = "permit"   // the cell download-slot handshake
	kindOutcome  = "outcome"  // the job finished or was rejected
	kindNote     = "note"     // anything else the server decided or noticed
)

// maxTimelineOffset bounds a timeline page token.
const maxTimelineOffset = 1 << 40

var errNoStore = errors.New("the device timeline is not available on this server (no event store)")

// timelineEntry is one rendered entry before paging.
type timelineEntry struct {
	at     int64
	taskID string
	kind   string
	detail string
}

// fmtTime formats a unix-nano time for a detail text.
func fmtTime(ns int64) string {
	return messages.Time(ns).UTC().Format(time.RFC3339Nano)
}

// outcomeText describes how a job ended.
func outcomeText(status messages.SubtaskStatus, reason messages.Reason, detail string, code int32) string {
	var b strings.Builder
	b.WriteString(strings.TrimPrefix(status.String(), "SUBTASK_STATUS_"))
	sep := ": "
	if r := messages.ReasonText(reason); r != "" {
		b.WriteString(sep + r)
		sep = "; "
	}
	if detail != "" {
		b.WriteString(sep + detail)
		sep = "; "
	}
	if code != 0 {
		fmt.Fprintf(&b, "%sresult code %d", sep, code)
	}
	return b.String()
}

// offerText describes where a device was told to download its package: the
// URI with its token (LwM2M), or the URL and the token sent beside it (MQTT's
// access_token). The token is masked unless reveal is set.
func offerText(o *messages.DownloadOffered, reveal bool) string {
	uri, tok := o.GetUri(), o.GetToken()
	masked := maskToken(uri, tok)
	inURI := masked != uri
	if !reveal {
		uri = masked
	}
	if tok == "" || inURI {
		return "download URI " + uri
	}
	if !reveal {
		tok = tokenMask
	}
	return "download URL " + uri + " with access token " + tok
}

// kindName is the name of the field set in msg's oneof "kind" (e.g.
// "lwm2m_read" for a Downlink), or ifNone when none is set.
func kindName(msg proto.Message, ifNone string) string {
	m := msg.ProtoReflect()
	od := m.Descriptor().Oneofs().ByName("kind")
	if od == nil {
		return ifNone
	}
	if f := m.WhichOneof(od); f != nil {
		return string(f.Name())
	}
	return ifNone
}

// jobTrack follows the device's job while the journal is folded.
type jobTrack struct {
	task string // the active job's task; "" when idle
	last string // the task of the job that finished last
}

// renderDeviceEvent turns one journaled device event into an entry; jt is
// the device's job before the event and is updated. Download tokens are
// masked (maskToken) unless reveal is set. Every kind of the
// vocabulary has its own text (TestRenderEveryDeviceEvent fails for a kind
// added without one). An event this server cannot name still gets an entry,
// a note naming its kind or saying it is unknown (a journal written by a
// newer version, whose kind decodes as none): a timeline with a visible
// stranger in it serves the reader better than a silent gap or no timeline.
func renderDeviceEvent(ev *messages.DeviceEvent, jt *jobTrack, reveal bool) timelineEntry {
	task := &jt.task
	e := timelineEntry{at: ev.GetAtUnixNano(), taskID: *task}
	switch k := ev.GetKind().(type) {
	case *messages.DeviceEvent_JobAccepted:
		j := k.JobAccepted.GetJob()
		*task = j.GetTaskId()
		e.taskID, e.kind = *task, kindJob
		e.detail = fmt.Sprintf("accepted attempt %d: %s to %s over %s",
			j.GetAttempt(),
			strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(j.GetTaskType().String(), "TASK_TYPE_"), "_", " ")),
			j.GetPackage().GetVersion(),
			strings.TrimPrefix(j.GetProtocol().String(), "PROTOCOL_"))
		if j.GetSkipVersionCheck() {
			e.detail += ", version check skipped"
		}
	case *messages.DeviceEvent_JobRejected:
		r := k.JobRejected
		e.taskID, e.kind = r.GetTaskId(), kindOutcome
		e.detail = fmt.Sprintf("rejected attempt %d: %s", r.GetAttempt(), messages.ReasonText(r.GetReason()))
		if r.GetDetail() != "" {
			e.detail += "; " + r.GetDetail()
		}
	case *messages.DeviceEvent_StageEntered:
		s := k.StageEntered
		e.kind = kindStage
		e.detail = "stage " + strings.TrimPrefix(s.GetStage().String(), "STAGE_")
		if s.GetVerifyCause() != messages.VerifyCause_VERIFY_CAUSE_UNSPECIFIED {
			e.detail += " (" + strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(s.GetVerifyCause().String(), "VERIFY_CAUSE_"), "_", " ")) + ")"
		}
		if d := s.GetDeadlineUnixNano(); d != 0 {
			e.detail += ", deadline " + fmtTime(d)
		} else {
			e.detail += ", no deadline"
		}
	case *messages.DeviceEvent_PresenceChanged:
		p := k.PresenceChanged
		e.kind = kindPresence
		switch {
		case !p.GetOnline():
			e.detail = "offline"
		case p.GetQueueMode() && p.GetAwake():
			e.detail = "online, awake (queue mode)"
		case p.GetQueueMode():
			e.detail = "online, asleep (queue mode)"
		default:
			e.detail = "online"
		}
	case *messages.DeviceEvent_AbnormalChanged:
		e.kind = kindPresence
		if k.AbnormalChanged.GetAbnormal() {
			e.detail = "marked abnormal"
		} else {
			e.detail = "no longer abnormal"
		}
	case *messages.DeviceEvent_VersionRecorded:
		v := k.VersionRecorded
		e.kind = kindReport
		var parts []string
		if v.FwVersion != nil {
			parts = append(parts, "fw_version "+v.GetFwVersion())
		}
		if v.SwVersion != nil {
			parts = append(parts, "sw_version "+v.GetSwVersion())
		}
		e.detail = "reported " + strings.Join(parts, ", ")
	case *messages.DeviceEvent_RadioRecorded:
		r := k.RadioRecorded
		e.kind = kindReport
		var parts []string
		if r.GetCellId() != "" {
			parts = append(parts, "cell_id "+r.GetCellId())
		}
		if r.Rsrp != nil {
			parts = append(parts, fmt.Sprintf("rsrp %d dBm", r.GetRsrp()))
		}
		if r.Sinr != nil {
			parts = append(parts, fmt.Sprintf("sinr %d dB", r.GetSinr()))
		}
		if len(parts) == 0 {
			parts = append(parts, "no radio values")
		}
		e.detail = "reported " + strings.Join(parts, ", ")
	case *messages.DeviceEvent_DownlinkQueued:
		e.kind = kindNote
		e.detail = kindName(k.DownlinkQueued.GetDownlink(), "downlink") + " queued until the device is reachable"
	case *messages.DeviceEvent_OutboxFlushed:
		e.kind = kindNote
		e.detail = "queued downlinks sent"
	case *messages.DeviceEvent_PermitRequested:
		p := k.PermitRequested
		e.kind = kindPermit
		e.detail = fmt.Sprintf("waiting for a download slot in cell %s", p.GetCellId())
		if p.GetCellOnly() {
			e.detail += " (cell ID only, no radio values)"
		}
	case *messages.DeviceEvent_PermitHeld:
		e.kind = kindPermit
		e.detail = "cell " + k.PermitHeld.GetCellId() + " granted a download slot"
	case *messages.DeviceEvent_PermitReleased:
		e.kind = kindPermit
		e.detail = "released the download slot of cell " + k.PermitReleased.GetCellId()
		if e.taskID == "" {
			e.taskID = jt.last // the slot of the job that just finished
		}
	case *messages.DeviceEvent_ProgressRecorded:
		e.kind = kindReport
		e.detail = fmt.Sprintf("reported progress %d%%", k.ProgressRecorded.GetProgress())
	case *messages.DeviceEvent_Noted:
		e.kind = kindNote
		e.detail = k.Noted.GetText()
	case *messages.DeviceEvent_JobFinished:
		f := k.JobFinished
		e.kind = kindOutcome
		e.detail = "finished " + outcomeText(f.GetStatus(), f.GetReason(), f.GetDetail(), f.GetResultCode())
		jt.last, *task = *task, ""
	case *messages.DeviceEvent_PackageUriSent:
		e.kind = kindNote
		e.detail = "package URI written to /5/0/1"
	case *messages.DeviceEvent_PackageUriAccepted:
		e.kind = kindReport
		e.detail = "acknowledged the package URI"
	case *messages.DeviceEvent_DownloadOffered:
		e.kind = kindNote
		e.detail = offerText(k.DownloadOffered, reveal)
	default:
		e.kind = kindNote
		e.detail = "event " + kindName(ev, "of a kind this server does not know")
	}
	return e
}

func (s *deviceServer) GetDeviceTimeline(ctx context.Context, req *connect.Request[v1.GetDeviceTimelineRequest]) (*connect.Response[v1.GetDeviceTimelineResponse], error) {
	m := req.Msg
	id := m.GetDeviceId()
	if err := checkID("device_id", id); err != nil {
		return nil, err
	}
	if m.TaskId != nil {
		if err := checkID("task_id", m.GetTaskId()); err != nil {
			return nil, err
		}
	}
	offset := 0
	if tok := m.GetPageToken(); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 || n > maxTimelineOffset || strconv.Itoa(n) != tok {
			return nil, invalid("page_token", "not a token this server returned")
		}
		offset = n
	}
	if s.store == nil {
		return nil, connect.NewError(connect.CodeUnavailable, errNoStore)
	}
	if _, err := s.reg.GetDevice(ctx, id); err != nil {
		if errors.Is(err, persistence.ErrNotFound) {
			return nil, notFound("device_id", "device", id)
		}
		return nil, toConnect(s.log, "GetDeviceTimeline", err)
	}
	limit := persistence.ListLimit(int(m.GetPageSize()))
	out := &v1.GetDeviceTimelineResponse{}
	var jt jobTrack
	matched := 0
	errFull := errors.New("page full")
	err := s.store.Load(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: id}, 0, func(ev persistence.Event) error {
		if ev.Type != persistence.EventTypeDevice {
			return nil
		}
		de := new(messages.DeviceEvent)
		if err := proto.Unmarshal(ev.Payload, de); err != nil {
			return fmt.Errorf("device %s event %d: %w", id, ev.Seq, err)
		}
		if de.GetAtUnixNano() == 0 {
			de.AtUnixNano = ev.At
		}
		e := renderDeviceEvent(de, &jt, m.GetRevealTokens())
		if m.TaskId != nil && e.taskID != m.GetTaskId() {
			return nil
		}
		matched++
		if matched <= offset {
			return nil
		}
		if len(out.Entries) == limit {
			out.NextPageToken = strconv.Itoa(offset + limit)
			return errFull
		}
		out.Entries = append(out.Entries, &v1.TimelineEntry{
			Time:   timestamppb.New(messages.Time(e.at)),
			TaskId: e.taskID,
			Kind:   e.kind,
			Detail: e.detail,
		})
		return nil
	})
	if err != nil && !errors.Is(err, errFull) {
		return nil, toConnect(s.log, "GetDeviceTimeline", err)
	}
	return connect.NewResponse(out), nil
}
