package devicefsm

import (
	"github.com/otafleet/otafleet/messages"
)

// occasion is why the requests of a job's stage may have to go again.
type occasion int

const (
	// restarted: the server rebuilt the state from its journal (Resume).
	// The device may still hold its session, its observations and the
	// requests it answered; what it answered died with the old process.
	restarted occasion = iota
	// reconnected: the device opened a new session (Connected: MQTT
	// CONNECT, LwM2M Register), the reboot cue of spec 3.3. Its
	// observations are gone and it may have lost what it was sent.
	reconnected
	// updated: an LwM2M device updated its registration (POST /rd/{id}),
	// keeping its session and observations. After an Execute it is the
	// reboot cue of spec 3.3: a device that rebooted to install and kept
	// its registration shows the outcome in object 5.
	updated
)

// owed answers "what does this stage still owe the device": the downlinks of
// the job's current stage that must go (again) because the device may never
// have received them or the answers may have been lost, in the order they
// must go out. It is the one answer Resume and connected share; it reads s
// alone and is empty for an idle device.
//
//   - A PCP job observes /19/0/0 again from the version query on: PCP
//     travels on it (spec 4.9), and a restarted server has lost the
//     observation.
//   - A FOTA job between the notification and the update re-observes
//     /5/0/3 and /5/0/5. Before the download has finished it first writes
//     the URI again when the write's acknowledgement never arrived
//     (object 5's reports cannot be told from those before the write), the
//     reset before it while the device never acknowledged the job's URI
//     (packageURIWrites). The write comes first because it makes object
//     5's reports wait for its acknowledgement: the device may have
//     finished downloading before it is observed again, and the
//     observation's first answer (State 2) must then come after the
//     acknowledgement, not be dropped as a state from before the write. A
//     device that acknowledged the URI is not sent it again on a new
//     session: a client that rebooted resumes its download by itself and
//     refuses a write while it downloads. It is read object 5 instead
//     (State and Update Result in one answer), and only State 0 with
//     Update Result 0, a device that lost the URI, has it written again
//     (decider.fotaStatus). That read goes before the observations: its
//     answer may show State 2 and send the Execute, and a whole object 5
//     answered after the Execute went would be taken for a device that
//     never got it (decider.executeAgain). In DOWNLOADED object 5 is read
//     after the observations: the Execute may have been lost.
//   - A registration update (updated) owes only this read of object 5,
//     in DOWNLOADED and UPGRADING: after an Execute it tells whether the
//     device installed (Update Result 1), failed, or put the update off,
//     instead of waiting for T9.
//   - A stage waiting for an answer asks again: the version (VERSION_QUERY,
//     VERIFYING), the radio (RADIO_QUERY), the cell ID (CELL_QUERY), and
//     PCP's 0x14 with the same version and check code, from which the
//     device resumes (spec 4.8).
//   - On a new session only: an MQTT device that has not reported progress
//     gets its upgrade event again (spec 7, question 10), and one that has
//     is asked for its version, since its final report may have been lost
//     with the old session; a PCP 0x17 that is due (State.PcpExecuteDue)
//     goes on the new session. After a restart an MQTT device gets no
//     second event (every MQTT device reconnects to a restarted embedded
//     broker), and the due 0x17 waits for its deadline, which Resume
//     re-arms at once.
//
// Never owed: a second Execute to a device that may have taken the first
// (FOTA reads object 5 first, PCP never repeats a 0x17 it sent).
func owed(s State, on occasion) []*messages.Downlink {
	j := s.Job
	if j == nil {
		return nil
	}
	p, st := j.GetProtocol(), s.Stage
	if on == updated {
		if p == protoFOTA && (st == stDownloaded || st == stUpgrading) {
			return []*messages.Downlink{readFotaObject(s)}
		}
		return nil
	}
	var out []*messages.Downlink
	if p == protoPCP && st >= stVersion {
		out = append(out, observe(messages.PathPCPUplink))
	}
	if p == protoFOTA && st >= stNotified && st <= stUpgrading {
		switch due := st == stNotified || st == stDownloading; {
		case due && !s.UriAcked:
			out = append(out, packageURIWrites(s)...)
		case due && on == reconnected:
			out = append(out, readFotaObject(s))
		}
		out = append(out, observe(messages.PathFotaState), observe(messages.PathUpdateResult))
		if st == stDownloaded {
			out = append(out, readFotaObject(s))
		}
	}
	switch st {
	case stVersion, stVerifying:
		out = append(out, versionQuery(p))
	case stRadio:
		out = append(out, read(messages.PathConnMon))
	case stCell:
		out = append(out, read(messages.PathCellID))
	case stNotified, stDownloading:
		switch {
		case p == protoPCP:
			out = append(out, pcpNotify(j.GetPackage()))
		case p == protoMQTT && on == reconnected && st == stNotified:
			out = append(out, mqttUpgrade(j))
		case p == protoMQTT && on == reconnected:
			out = append(out, versionQuery(protoMQTT))
		}
	case stDownloaded:
		if p == protoPCP && s.PcpExecuteDue && on == reconnected {
			out = append(out, pcpExecuteRequest())
		}
	}
	return out
}

// resend sends a downlink the stage owes (owed, packageURIWrites) on a new
// session or a registration update, or the package URI's writes. A
// question (a read, a version query) goes only if the flushed outbox did
// not just carry it; an observation or a notification starts over on the
// new session. The URI write, the upgrade event and the 0x17 go with what
// journals them.
func (d *decider) resend(dl *messages.Downlink) {
	switch dl.GetKind().(type) {
	case *messages.Downlink_Lwm2MWritePackageUri:
		d.writePackageURI()
	case *messages.Downlink_MqttUpgrade:
		d.send(dl)
		d.note("device reconnected before reporting progress: upgrade event sent again")
	case *messages.Downlink_PcpExecute:
		d.pcpExecute()
	case *messages.Downlink_Lwm2MRead, *messages.Downlink_MqttVersionQuery, *messages.Downlink_PcpQueryVersion:
		d.sendOnce(dl)
	default:
		d.send(dl)
	}
}
