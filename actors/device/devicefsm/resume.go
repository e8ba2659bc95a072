package devicefsm

import (
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

// Resume returns the work a device must redo after its state was rebuilt from
// the journal. It derives everything from s alone:
//
//   - the armed deadline of the current stage, at its absolute time and generation;
//   - the permit request of a job waiting for its cell slot, and the
//     version_query probe of an MQTT job waiting for its device;
//   - to a reachable device, what the stage owes it after a restart
//     (owed): the observations a FOTA or PCP flow relies on, the FOTA
//     package URI again when its write was never acknowledged, the read of
//     object 5 that tells whether a FOTA device took its Execute, and the
//     stage's idempotent request (a version query, a radio or cell read,
//     the PCP 0x14 notification while the download has not finished),
//     each unless it waits in the outbox anyway; never a second MQTT
//     upgrade event, and never a second Execute to a device that may have
//     taken the first. A PCP device gets no second 0x17: nothing it
//     answers tells a lost 0x17 from one it took (it reports the old
//     version until it has installed), so T8 ends that wait. A PCP device
//     whose 0x17 was due but never journaled as sent (State.PcpExecuteDue)
//     gets it: its deadline is re-armed at 0, so it fires at once and that
//     step sends and journals the 0x17;
//   - for an idle device, the last outcome and the release of its cell slot,
//     in case the crash came between journaling them and sending them (tasks
//     and cells ignore duplicates).
func Resume(s State) []*messages.DeviceEffect {
	var out []*messages.DeviceEffect
	if s.Job == nil {
		if s.Last != nil {
			if s.Last.PermitCell != "" {
				out = append(out, &messages.DeviceEffect{Kind: &messages.DeviceEffect_ReleasePermit{ReleasePermit: &messages.ReleasePermit{
					CellId: s.Last.PermitCell, DeviceId: s.DeviceID,
				}}})
			}
			out = append(out, &messages.DeviceEffect{Kind: &messages.DeviceEffect_ReportOutcome{ReportOutcome: cloneOutcome(s.Last.Outcome)}})
		}
		return out
	}
	switch {
	case s.PcpExecuteDue && s.Stage == stDownloaded && s.Job.GetProtocol() == protoPCP:
		// The 0x17 is due and never left: its deadline is re-armed to fire
		// at once, and the step it fires sends the 0x17 and journals that it
		// did (decider.pcpExecute), so a second restart sends no second one.
		a := armEffect(s)
		a.GetArmDeadline().AtUnixNano = 0
		out = append(out, a)
	case !s.Deadline.IsZero():
		out = append(out, armEffect(s))
	}
	if s.Stage == stWaitPermit {
		// Not a return: a PCP device waiting for its slot still needs
		// /19/0/0 observed again below, or its 0x15 requests after the
		// grant would travel on an observation the old process held.
		out = append(out, &messages.DeviceEffect{Kind: &messages.DeviceEffect_RequestPermit{RequestPermit: permitRequest(s)}})
	}
	if s.Stage == stWaitOnline && s.Job.GetProtocol() == protoMQTT {
		out = append(out, mqttProbe(s.DeviceID)) // the probe of an awaited MQTT device
	}
	if !s.Reachable() {
		return out // queued downlinks go out with the next uplink
	}
next:
	for _, dl := range owed(s, restarted) {
		dl.DeviceId = s.DeviceID
		for _, q := range s.Outbox {
			if proto.Equal(q, dl) {
				continue next
			}
		}
		out = append(out, &messages.DeviceEffect{Kind: &messages.DeviceEffect_Downlink{Downlink: dl}})
	}
	return out
}
