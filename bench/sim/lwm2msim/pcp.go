package lwm2msim

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/lwm2m/lwm2mcodec"
	"github.com/otafleet/otafleet/transport/pcp"
)

// maxSegmentRetries bounds the repetitions of an unanswered 0x15 request
// before the download ends with 0x16 status 0x06 (download timeout).
const maxSegmentRetries = 3

// pcpState is the device's PCP side (spec 4). Guarded by Device.mu.
type pcpState struct {
	job          *pcpJob
	pending18    []byte // a 0x18 frame the platform has not acknowledged
	reported18   *Event // EventReported of pending18, until the frame could be sent
	installTimer clock.Timer
	// segTimer is the download's next step: the retry of an unanswered
	// 0x15 (SegmentTimeout), or the next request or the download result
	// after ThinkTime or the BytesPerSecond pace.
	segTimer clock.Timer
}

// pcpJob is the software package announced by a 0x14.
type pcpJob struct {
	version               string
	segSize, count, check uint16
	next                  uint16 // the next segment to request
	h                     hash.Hash
	size                  int64
	downloaded            bool // every segment arrived; 0x16 sent with status
	status                byte
	acked                 bool // the platform answered the 0x16
	executing             bool
	retries               int
	resume                bool // a restart happened: carry on when /19/0/0 is observed again
	started               bool // the first 0x15 went out (EventDownloadStart)
	pace                  pacer
}

// pcpFailure returns the result code that Behaviour gives the PCP step c,
// 0 for none.
func (d *Device) pcpFailure(c messages.PcpCode) byte {
	if d.cfg.Behaviour.PCPFailAt == c {
		return d.cfg.Behaviour.PCPResult
	}
	return 0
}

// pcpDownlink handles the payload of a Write of /19/1/0. A payload that is
// not a PCP frame is business data, which the device ignores.
func (d *Device) pcpDownlink(s *session, frame []byte) {
	msg, err := pcp.DecodeDownlink(frame)
	if err != nil {
		d.log.Debug("lwm2msim: /19/1/0 payload ignored (not a PCP frame)", "err", err)
		return
	}
	d.mu.Lock()
	defer d.unlock()
	st := &d.pcp
	switch m := msg.(type) {
	case pcp.QueryVersion:
		d.pcpSendLocked(s, d.versionResponseLocked())
	case pcp.NotifyNewVersion:
		d.pcpNotifyLocked(s, m)
	case pcp.SegmentResponse:
		d.pcpSegmentLocked(s, m)
	case pcp.DownloadResultAck:
		if j := st.job; j != nil && j.downloaded {
			j.acked = true
			if m.Result == messages.PcpResultNoSuchTask {
				d.log.Info("lwm2msim: PCP: the platform has no task for the download", "version", j.version)
				st.job = nil
			}
		}
	case pcp.ExecuteUpgrade:
		d.pcpExecuteLocked(s)
	case pcp.UpgradeResultAck:
		st.pending18 = nil
	}
}

// versionResponseLocked is the 0x13 response.
func (d *Device) versionResponseLocked() []byte {
	b, err := pcp.EncodeVersionResponse(pcp.VersionResponse{Result: messages.PcpResultOK, Version: d.sw})
	if err != nil {
		d.log.Warn("lwm2msim: PCP: software version cannot be sent", "version", d.sw, "err", err)
		b, _ = pcp.EncodeVersionResponse(pcp.VersionResponse{Result: messages.PcpResultInternalError})
	}
	return b
}

// pcpSendLocked sends a frame to the platform as a notification of
// /19/0/0 on session s; it is lost (and logged) when the platform does not
// observe /19/0/0.
func (d *Device) pcpSendLocked(s *session, frame []byte) bool {
	if s == nil || s.dead {
		d.log.Info("lwm2msim: PCP frame dropped: no session", "frame", hex.EncodeToString(frame))
		return false
	}
	sent := false
	for _, o := range s.sortedObservers() {
		if !o.path.Contains(pathUplink) {
			continue
		}
		d.notifyLocked(s, o, []lwm2mcodec.Value{lwm2mcodec.OpaqueValue(pathUplink, frame)}, false)
		sent = true
	}
	if !sent {
		d.log.Info("lwm2msim: PCP frame dropped: /19/0/0 not observed", "frame", hex.EncodeToString(frame))
	}
	return sent
}

// pcpNotifyLocked handles a 0x14 new version notification.
func (d *Device) pcpNotifyLocked(s *session, m pcp.NotifyNewVersion) {
	st := &d.pcp
	d.event(Event{Kind: EventCommand, Upgrade: upgradeSoftware, Version: m.Version})
	refuse := func(r byte) {
		d.log.Info("lwm2msim: PCP: upgrade refused", "version", m.Version, "result", messages.PcpResultText(r))
		d.pcpSendLocked(s, pcp.EncodeNotifyResponse(pcp.NotifyResponse{Result: r}))
		d.failed(Event{Upgrade: upgradeSoftware, Version: m.Version}, int(r))
	}
	switch {
	case d.pcpFailure(messages.PcpCodeNotifyNewVersion) != 0:
		refuse(d.pcpFailure(messages.PcpCodeNotifyNewVersion))
		return
	case st.job != nil && st.job.executing:
		refuse(messages.PcpResultBusy)
		return
	case m.Version == d.sw:
		refuse(messages.PcpResultAlreadyLatest)
		return
	case m.SegmentSize == 0 || m.SegmentCount == 0:
		refuse(messages.PcpResultInternalError)
		return
	}
	j := st.job
	if j != nil && j.version == m.Version && j.check == m.CheckCode && j.segSize == m.SegmentSize &&
		j.count == m.SegmentCount && j.status == messages.PcpResultOK {
		d.log.Info("lwm2msim: PCP: same package announced again, continuing", "version", j.version, "next", j.next)
	} else {
		j = &pcpJob{version: m.Version, segSize: m.SegmentSize, count: m.SegmentCount, check: m.CheckCode, h: sha256.New(),
			pace: pacer{rate: d.cfg.Behaviour.BytesPerSecond}}
		st.job = j
		d.log.Info("lwm2msim: PCP: new version", "version", j.version, "segments", j.count, "segment_size", j.segSize)
	}
	j.resume = false
	d.pcpSendLocked(s, pcp.EncodeNotifyResponse(pcp.NotifyResponse{Result: messages.PcpResultOK}))
	if j.downloaded {
		d.pcpSendLocked(s, pcp.EncodeDownloadResult(pcp.DownloadResult{Status: j.status}))
		return
	}
	// The response went out at once; the device's next step waits for
	// ThinkTime. The pace counts from then.
	d.pcpAfterLocked(s, j, d.cfg.Behaviour.ThinkTime, "thinking", func(s *session, j *pcpJob) {
		j.pace.reset(d.clk.Now(), j.size)
		d.pcpContinueLocked(s, j)
	})
}

// pcpAfterLocked runs step (with d.mu held) after dur on the device's
// clock, as the download's next step (segTimer, replacing the one armed):
// on session s at once when dur <= 0, else on the session current then,
// unless the job is over, restarting or replaced by then. Once the timer is
// armed, the test hook is told of event.
func (d *Device) pcpAfterLocked(s *session, j *pcpJob, dur time.Duration, event string, step func(*session, *pcpJob)) {
	d.pcpStopTimerLocked()
	if dur <= 0 {
		step(s, j)
		return
	}
	var t clock.Timer
	t = d.clk.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.unlock()
		st := &d.pcp
		if d.stopped || st.segTimer != t {
			return // stopped or replaced meanwhile
		}
		st.segTimer = nil
		if st.job != j || j.downloaded || j.executing || j.resume {
			return
		}
		step(d.sess, j)
	})
	d.pcp.segTimer = t
	d.hookLocked(event)
}

// pcpStopTimerLocked stops the download's next step.
func (d *Device) pcpStopTimerLocked() {
	if d.pcp.segTimer != nil {
		d.pcp.segTimer.Stop()
		d.pcp.segTimer = nil
	}
}

// pcpContinueLocked takes the download's next step: it asks for the next
// segment, or, once every segment is in, reports the download result.
func (d *Device) pcpContinueLocked(s *session, j *pcpJob) {
	if j.next >= j.count {
		d.pcpDownloadedLocked(s, j)
		return
	}
	d.pcpRequestLocked(s, j)
}

// pcpRequestLocked asks for the job's next segment and arms its retry.
func (d *Device) pcpRequestLocked(s *session, j *pcpJob) {
	b, err := pcp.EncodeSegmentRequest(pcp.SegmentRequest{Version: j.version, SegmentNo: j.next})
	if err != nil { // the version came from a decoded 0x14: cannot happen
		d.log.Warn("lwm2msim: PCP: segment request", "err", err)
		return
	}
	if !j.started {
		j.started = true
		d.event(Event{Kind: EventDownloadStart, Upgrade: upgradeSoftware, Version: j.version})
	}
	d.pcpSendLocked(s, b)
	no := j.next
	d.pcpStopTimerLocked()
	d.pcp.segTimer = d.clk.AfterFunc(d.cfg.SegmentTimeout, func() { d.pcpSegmentTimeout(j, no) })
}

// pcpSegmentTimeout repeats an unanswered segment request.
func (d *Device) pcpSegmentTimeout(j *pcpJob, no uint16) {
	d.mu.Lock()
	defer d.unlock()
	if d.stopped || d.pcp.job != j || j.downloaded || j.next != no || j.resume {
		return
	}
	j.retries++
	if j.retries > maxSegmentRetries {
		d.log.Info("lwm2msim: PCP: segment not received, giving up", "segment", no)
		d.pcpFinishLocked(d.sess, j, messages.PcpResultDownloadTimeout)
		return
	}
	d.log.Info("lwm2msim: PCP: segment not received, asking again", "segment", no, "try", j.retries)
	d.pcpRequestLocked(d.sess, j)
}

// pcpSegmentLocked handles a 0x15 segment response.
func (d *Device) pcpSegmentLocked(s *session, m pcp.SegmentResponse) {
	st := &d.pcp
	j := st.job
	if j == nil || j.downloaded || j.executing {
		return
	}
	if m.Result != messages.PcpResultOK {
		d.log.Info("lwm2msim: PCP: segment refused, download abandoned", "segment", m.SegmentNo, "result", messages.PcpResultText(m.Result))
		st.job = nil
		d.pcpStopTimerLocked()
		return
	}
	if m.SegmentNo != j.next || j.next >= j.count {
		d.log.Debug("lwm2msim: PCP: unexpected segment ignored", "segment", m.SegmentNo, "want", j.next)
		return
	}
	d.pcpStopTimerLocked()
	last := j.next == j.count-1
	if n := len(m.Data); (!last && n != int(j.segSize)) || (last && (n == 0 || n > int(j.segSize))) {
		d.log.Info("lwm2msim: PCP: segment of a wrong size", "segment", m.SegmentNo, "bytes", n, "segment_size", j.segSize)
		d.pcpFinishLocked(s, j, messages.PcpResultVerificationFailed)
		return
	}
	j.h.Write(m.Data)
	j.size += int64(len(m.Data))
	j.next++
	j.retries = 0
	d.stats.SegmentsFetched++
	if b := d.cfg.Behaviour; j.next < j.count && b.StopAfterBlocks > 0 && !d.restarted && int(j.next) >= b.StopAfterBlocks {
		d.restarted = true
		d.restartLocked("StopAfterBlocks during the PCP download")
		return
	}
	// The next request, or the download result after the last segment,
	// waits while the bytes are ahead of BytesPerSecond.
	d.pcpAfterLocked(s, j, j.pace.delay(d.clk.Now(), j.size), "paced", d.pcpContinueLocked)
}

// pcpDownloadedLocked ends a download whose segments are all in: it checks
// the package and reports the download result.
func (d *Device) pcpDownloadedLocked(s *session, j *pcpJob) {
	status := byte(messages.PcpResultOK)
	var sum [sha256.Size]byte
	copy(sum[:], j.h.Sum(nil))
	d.stats.SHA256 = hex.EncodeToString(sum[:])
	if d.cfg.VerifyCheckCode && j.check != 0 && pcp.CheckCode(sum) != j.check {
		d.log.Info("lwm2msim: PCP: check code mismatch", "check_code", j.check, "package", pcp.CheckCode(sum))
		status = messages.PcpResultVerificationFailed
	}
	if r := d.pcpFailure(messages.PcpCodeReportDownloadResult); r != 0 {
		status = r
	}
	d.log.Info("lwm2msim: PCP: downloaded", "version", j.version, "bytes", j.size, "sha256", d.stats.SHA256)
	d.event(Event{Kind: EventDownloadDone, Upgrade: upgradeSoftware, Version: j.version, Bytes: j.size})
	d.pcpFinishLocked(s, j, status)
}

// pcpFinishLocked ends the download and reports it with 0x16.
func (d *Device) pcpFinishLocked(s *session, j *pcpJob, status byte) {
	j.downloaded, j.status = true, status
	d.pcpStopTimerLocked()
	d.pcpSendLocked(s, pcp.EncodeDownloadResult(pcp.DownloadResult{Status: status}))
	if status != messages.PcpResultOK {
		d.failed(Event{Upgrade: upgradeSoftware, Version: j.version}, int(status))
	}
}

// pcpExecuteLocked handles a 0x17 execute upgrade.
func (d *Device) pcpExecuteLocked(s *session) {
	st := &d.pcp
	respond := func(r byte) {
		d.pcpSendLocked(s, pcp.EncodeExecuteResponse(pcp.ExecuteResponse{Result: r}))
		if r != messages.PcpResultOK {
			version := ""
			if st.job != nil {
				version = st.job.version
			}
			d.failed(Event{Upgrade: upgradeSoftware, Version: version}, int(r))
		}
	}
	if r := d.pcpFailure(messages.PcpCodeExecuteUpgrade); r != 0 {
		d.log.Info("lwm2msim: PCP: execute refused on purpose", "result", messages.PcpResultText(r))
		respond(r)
		return
	}
	j := st.job
	switch {
	case j == nil || !j.downloaded || j.status != messages.PcpResultOK:
		d.log.Info("lwm2msim: PCP: execute without a downloaded package")
		respond(messages.PcpResultInternalError)
		return
	case j.executing:
		respond(messages.PcpResultOK) // a repeated 0x17: already on it
		return
	}
	j.executing = true
	d.stats.Executes++
	respond(messages.PcpResultOK)
	in := d.cfg.Behaviour.ThinkTime + d.cfg.Behaviour.UpdateDelay
	st.installTimer = d.clk.AfterFunc(in, func() { d.pcpInstall(j) })
	d.log.Info("lwm2msim: PCP: upgrading", "version", j.version, "in", in)
}

// pcpInstall ends the upgrade and reports it with 0x18, after a reboot when
// RebootOnUpdate.
func (d *Device) pcpInstall(j *pcpJob) {
	d.mu.Lock()
	defer d.unlock()
	st := &d.pcp
	if d.stopped || st.job != j {
		return
	}
	st.installTimer = nil
	st.job = nil
	res := pcp.UpgradeResult{Result: d.pcpFailure(messages.PcpCodeReportUpgradeResult)}
	if res.Result == messages.PcpResultOK {
		d.sw = j.version
		d.stats.Upgrades++
		d.changedLocked(pathSwVersion)
		d.log.Info("lwm2msim: PCP: software updated", "version", d.sw)
		d.event(Event{Kind: EventInstalled, Upgrade: upgradeSoftware, Version: j.version})
	} else {
		d.log.Info("lwm2msim: PCP: upgrade fails on purpose", "result", messages.PcpResultText(res.Result))
		d.event(Event{Kind: EventFailed, Upgrade: upgradeSoftware, Version: j.version, Code: int(res.Result)})
	}
	st.reported18 = &Event{Kind: EventReported, Upgrade: upgradeSoftware, Version: j.version, Code: int(res.Result)}
	res.Version = d.sw
	b, err := pcp.EncodeUpgradeResult(res)
	if err != nil {
		d.log.Warn("lwm2msim: PCP: software version cannot be sent", "version", d.sw, "err", err)
		b, _ = pcp.EncodeUpgradeResult(pcp.UpgradeResult{Result: messages.PcpResultInternalError})
	}
	st.pending18 = b
	if d.cfg.Behaviour.RebootOnUpdate {
		d.restartLocked("reboot to install the software")
		return
	}
	d.pcpSend18Locked(d.sess)
}

// pcpSend18Locked sends the pending 0x18; the first time it goes out, the
// device's result is reported.
func (d *Device) pcpSend18Locked(s *session) {
	st := &d.pcp
	if d.pcpSendLocked(s, st.pending18) && st.reported18 != nil {
		d.event(*st.reported18)
		st.reported18 = nil
	}
}

// pcpObservedLocked runs when the platform observes /19/0/0: after a
// restart the device carries on where it was, and it reports an
// unacknowledged upgrade result again (LiteOS sends 0x18 unsolicited after
// its reboot).
func (d *Device) pcpObservedLocked(s *session) {
	st := &d.pcp
	if st.pending18 != nil {
		d.pcpSend18Locked(s)
	}
	j := st.job
	if j == nil || !j.resume {
		return
	}
	j.resume = false
	switch {
	case !j.downloaded:
		d.log.Info("lwm2msim: PCP: resuming the download", "version", j.version, "segment", j.next)
		j.pace.reset(d.clk.Now(), j.size)
		d.pcpContinueLocked(s, j)
	case !j.acked:
		d.pcpSendLocked(s, pcp.EncodeDownloadResult(pcp.DownloadResult{Status: j.status}))
	}
}

// pcpRestartLocked prepares the PCP side for a restart.
func (d *Device) pcpRestartLocked() {
	d.pcpStopTimerLocked()
	if j := d.pcp.job; j != nil {
		j.resume = true
	}
}
