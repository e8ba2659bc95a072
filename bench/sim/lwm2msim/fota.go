package lwm2msim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/url"
	"strings"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
)

// maxBlockRetries bounds the repeated requests for one block (timeouts,
// 5.xx answers) before the download fails with Update Result 4.
const maxBlockRetries = 3

// fotaState is object 5. Guarded by Device.mu.
type fotaState struct {
	state, result int
	uri           string
	job           *fotaJob // the download (State 1) or the downloaded package (2, 3)
	partial       *fotaJob // a download the network broke (result 4): the same URI resumes it
	timer         clock.Timer
	report        *Event // EventReported due once the device registers again (RebootOnUpdate)
}

// fotaJob is the download of one Package URI. Its progress fields belong to
// the download goroutine while it runs.
type fotaJob struct {
	uri, path, pkgID string
	queries          []string
	ctx              context.Context
	cancel           context.CancelFunc

	offset   int64 // bytes received and hashed
	szx      blockwise.SZX
	etag     []byte
	size     int64 // the server's Size2; -1 unknown
	h        hash.Hash
	blocks   int   // blocks received by this job
	received int64 // bytes of every block answer received, for BytesPerSecond
}

// event is an Event of the job's upgrade.
func (j *fotaJob) event(kind string) Event {
	return Event{Kind: kind, Upgrade: upgradeFirmware, Package: j.pkgID}
}

func (j *fotaJob) reset(szx blockwise.SZX) {
	j.offset, j.szx, j.etag, j.size, j.h = 0, szx, nil, -1, sha256.New()
}

// downloadPhaseFailure reports whether an Update Result of Behaviour fails
// the download rather than the update.
func downloadPhaseFailure(code int) bool {
	return code >= messages.UpdateResultNotEnoughStorage && code <= messages.UpdateResultInvalidURI || code == messages.UpdateResultUnsupportedProtocol
}

// fotaEvent is an Event of the FOTA upgrade of the Package URI uri.
func fotaEvent(kind, uri string) Event {
	ev := Event{Kind: kind, Upgrade: upgradeFirmware}
	if u, err := url.Parse(uri); err == nil && strings.Trim(u.Path, "/") != "" {
		ev.Package = packageID(u.Path)
	}
	return ev
}

// writePackageURI handles a Write of /5/0/1.
func (d *Device) writePackageURI(uri string) codes.Code {
	d.mu.Lock()
	defer d.unlock()
	f := &d.fota
	if uri == "" {
		d.log.Info("lwm2msim: Package URI reset")
		d.stopFotaLocked()
		f.partial = nil
		f.uri, f.state, f.result = "", messages.FotaStateIdle, messages.UpdateResultInitial
		d.changedLocked(pathPackageURI, pathResult, pathState)
		return codes.Changed
	}
	if f.state == messages.FotaStateUpdating {
		return codes.MethodNotAllowed
	}
	if d.cfg.Behaviour.StrictURI && f.state != messages.FotaStateIdle {
		d.log.Info("lwm2msim: Package URI refused outside State 0", "uri", uri, "state", f.state)
		return codes.BadRequest
	}
	d.event(fotaEvent(EventCommand, uri))
	if f.job != nil && f.job.uri == uri && (f.state == messages.FotaStateDownloading || f.state == messages.FotaStateDownloaded) {
		d.log.Info("lwm2msim: same Package URI written again, continuing", "uri", uri, "state", f.state)
		return codes.Changed
	}
	d.stopFotaLocked()
	f.uri = uri
	code := 0
	u, err := url.Parse(uri)
	switch {
	case err != nil || u.Host == "" || strings.Trim(u.Path, "/") == "":
		code = messages.UpdateResultInvalidURI
	case !strings.EqualFold(u.Scheme, d.packageScheme()):
		code = messages.UpdateResultUnsupportedProtocol // http..., or coap:// and coaps:// crossed: the download goes over the registered session
	}
	if bu := d.cfg.Behaviour.UpdateResult; bu == messages.UpdateResultInvalidURI || bu == messages.UpdateResultUnsupportedProtocol {
		code = bu
	}
	if code != 0 {
		d.log.Info("lwm2msim: Package URI refused", "uri", uri, "result", code)
		f.partial = nil
		f.state, f.result = messages.FotaStateIdle, code
		d.changedLocked(pathPackageURI, pathResult, pathState)
		d.failed(fotaEvent("", uri), code)
		return codes.Changed
	}
	szx, _ := szxOf(d.cfg.BlockSize)
	j := f.partial
	if j == nil || j.uri != uri {
		j = &fotaJob{uri: uri, path: u.Path, pkgID: packageID(u.Path)}
		if u.RawQuery != "" {
			j.queries = strings.Split(u.RawQuery, "&")
		}
		j.reset(szx)
	} else {
		d.log.Info("lwm2msim: resuming the broken download", "uri", uri, "at", j.offset)
	}
	f.partial = nil
	j.ctx, j.cancel = context.WithCancel(d.ctx)
	f.job = j
	f.state, f.result = messages.FotaStateDownloading, messages.UpdateResultInitial
	d.changedLocked(pathPackageURI, pathResult, pathState)
	d.goTrackedLocked(func() { d.download(j) })
	return codes.Changed
}

// packageScheme is the Package URI scheme the device downloads from: coaps
// over its DTLS session, coap over plain CoAP. Like Huawei's LiteOS agent it
// keeps only the URI's path and sends the GETs over the registered session,
// so a URI of the other scheme would promise a security the download does
// not have (or lack one it has): the device refuses it (Update Result 9).
func (d *Device) packageScheme() string {
	if d.cfg.PSK != nil {
		return "coaps"
	}
	return "coap"
}

// stopFotaLocked cancels the download and the pending installation.
func (d *Device) stopFotaLocked() {
	f := &d.fota
	if f.job != nil && f.job.cancel != nil {
		f.job.cancel()
	}
	f.job = nil
	if f.timer != nil {
		f.timer.Stop()
		f.timer = nil
	}
}

// codeError ends a download with an Update Result.
type codeError struct {
	result int
	err    error
}

func (e *codeError) Error() string { return fmt.Sprintf("update result %d: %v", e.result, e.err) }

// download fetches the job's package block by block over the registered
// session, across restarts, until it is complete, fails, or is cancelled.
// It starts after ThinkTime and keeps to BytesPerSecond.
func (d *Device) download(j *fotaJob) {
	if d.sleep(j.ctx, d.cfg.Behaviour.ThinkTime, "thinking") != nil {
		return // cancelled or stopped
	}
	d.event(j.event(EventDownloadStart))
	d.ev.flush()
	pace := pacer{rate: d.cfg.Behaviour.BytesPerSecond}
	var last *session
	retries := 0
	for {
		s, err := d.waitSession(j.ctx)
		if err != nil {
			return // cancelled or stopped
		}
		if s != last { // the start, or a new session after a restart
			pace.reset(d.clk.Now(), j.received)
			last = s
		}
		done, err := d.fetchBlock(s, j)
		if j.ctx.Err() != nil {
			return
		}
		if err != nil {
			var ce *codeError
			if errors.As(err, &ce) {
				d.downloadFailed(j, ce.result, ce.err)
				return
			}
			lost := s.lost()
			d.mu.Lock()
			dead := s.dead
			d.mu.Unlock()
			if dead || lost {
				continue // a restart or a lost connection: go on with the next session
			}
			retries++
			d.log.Info("lwm2msim: block request failed", "at", j.offset, "try", retries, "err", err)
			if retries > maxBlockRetries {
				d.downloadFailed(j, messages.UpdateResultConnectionLost, err)
				return
			}
			continue
		}
		retries = 0
		if d.sleep(j.ctx, pace.delay(d.clk.Now(), j.received), "paced") != nil {
			return
		}
		if done {
			d.downloaded(j)
			return
		}
		d.mu.Lock()
		if b := d.cfg.Behaviour; b.StopAfterBlocks > 0 && !d.restarted && j.blocks >= b.StopAfterBlocks {
			d.restarted = true
			d.restartLocked(fmt.Sprintf("StopAfterBlocks after %d blocks", j.blocks))
		}
		d.mu.Unlock()
	}
}

// fetchBlock asks for the block at the job's offset, in the current block
// size, and takes in the answer. done reports the last block.
func (d *Device) fetchBlock(s *session, j *fotaJob) (done bool, err error) {
	for j.szx > blockwise.SZX16 && j.offset%j.szx.Size() != 0 {
		j.szx-- // the server answered a larger block than asked: stay aligned
	}
	if j.offset%j.szx.Size() != 0 {
		szx, _ := szxOf(d.cfg.BlockSize)
		j.reset(szx)
	}
	num := j.offset / j.szx.Size()
	ctx, cancel := d.reqCtx(j.ctx)
	defer cancel()
	req, err := s.conn.NewGetRequest(ctx, j.path)
	if err != nil {
		return false, &codeError{messages.UpdateResultInvalidURI, err}
	}
	defer s.conn.ReleaseMessage(req)
	for _, q := range j.queries {
		req.AddQuery(q)
	}
	blk, err := blockwise.EncodeBlockOption(j.szx, num, false)
	if err != nil {
		return false, &codeError{messages.UpdateResultInvalidURI, err} // more blocks than Block2 can number
	}
	req.SetOptionUint32(message.Block2, blk)
	d.markUplink()
	resp, err := s.conn.Do(req)
	if err != nil {
		return false, err
	}
	defer s.conn.ReleaseMessage(resp)
	switch c := resp.Code(); {
	case c == codes.Content:
	case c >= codes.InternalServerError:
		return false, fmt.Errorf("block %d answered %v", num, c)
	default:
		return false, &codeError{messages.UpdateResultInvalidURI, fmt.Errorf("block %d answered %v", num, c)}
	}
	body, err := resp.ReadBody()
	if err != nil {
		return false, err
	}
	j.received += int64(len(body))
	etag, _ := resp.ETag()
	opt, err := resp.Options().GetUint32(message.Block2)
	if err != nil {
		// No Block2: the whole resource in one answer.
		szx := j.szx
		j.reset(szx)
		j.h.Write(body)
		j.offset = int64(len(body))
		j.size = j.offset
		d.countBlock(j)
		return true, nil
	}
	rszx, rnum, more, err := blockwise.DecodeBlockOption(opt)
	if err != nil || rszx > blockwise.SZX1024 {
		return false, fmt.Errorf("block %d: bad Block2 option %#x", num, opt)
	}
	if rnum*rszx.Size() != j.offset {
		return false, fmt.Errorf("asked block %d of %d bytes (offset %d), got block %d of %d bytes", num, j.szx.Size(), j.offset, rnum, rszx.Size())
	}
	if more && int64(len(body)) != rszx.Size() {
		return false, fmt.Errorf("block %d: %d bytes with more to come, want %d", rnum, len(body), rszx.Size())
	}
	if j.etag != nil && etag != nil && string(j.etag) != string(etag) {
		d.log.Info("lwm2msim: the package's ETag changed, downloading it again", "uri", j.uri)
		szx, _ := szxOf(d.cfg.BlockSize)
		j.reset(szx)
		return false, nil
	}
	if etag != nil {
		j.etag = append([]byte(nil), etag...)
	}
	if size2, err := resp.Options().GetUint32(message.Size2); err == nil {
		j.size = int64(size2)
	}
	j.h.Write(body)
	j.offset += int64(len(body))
	j.szx = rszx
	d.countBlock(j)
	return !more, nil
}

func (d *Device) countBlock(j *fotaJob) {
	j.blocks++
	d.mu.Lock()
	d.stats.BlocksFetched++
	d.mu.Unlock()
}

// downloaded ends a complete download: State 2, or the failure Behaviour
// asks for.
func (d *Device) downloaded(j *fotaJob) {
	d.mu.Lock()
	defer d.unlock()
	f := &d.fota
	if f.job != j {
		return
	}
	sum := hex.EncodeToString(j.h.Sum(nil))
	d.stats.SHA256 = sum
	done := j.event(EventDownloadDone)
	done.Bytes = j.offset
	d.event(done)
	switch bu := d.cfg.Behaviour.UpdateResult; {
	case j.size >= 0 && j.offset != j.size:
		d.log.Info("lwm2msim: package size mismatch", "got", j.offset, "size2", j.size)
		f.job, f.state, f.result = nil, messages.FotaStateIdle, messages.UpdateResultIntegrityCheck
	case downloadPhaseFailure(bu):
		d.log.Info("lwm2msim: download fails on purpose", "result", bu)
		f.job, f.state, f.result = nil, messages.FotaStateIdle, bu
	default:
		d.log.Info("lwm2msim: downloaded", "uri", j.uri, "bytes", j.offset, "sha256", sum)
		f.state = messages.FotaStateDownloaded
	}
	d.changedLocked(pathResult, pathState)
	if f.state == messages.FotaStateIdle {
		d.failed(j.event(""), f.result)
	}
}

// downloadFailed ends a download that could not complete.
func (d *Device) downloadFailed(j *fotaJob, result int, err error) {
	d.mu.Lock()
	defer d.unlock()
	f := &d.fota
	if f.job != j {
		return
	}
	d.log.Info("lwm2msim: download failed", "uri", j.uri, "at", j.offset, "result", result, "err", err)
	f.job = nil
	if result == messages.UpdateResultConnectionLost {
		f.partial = j
	}
	f.state, f.result = messages.FotaStateIdle, result
	d.changedLocked(pathResult, pathState)
	d.failed(j.event(""), result)
}

// executeUpdate handles an Execute of /5/0/2.
func (d *Device) executeUpdate() codes.Code {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := &d.fota
	if f.state != messages.FotaStateDownloaded || f.job == nil {
		return codes.MethodNotAllowed
	}
	f.state, f.result = messages.FotaStateUpdating, messages.UpdateResultInitial
	d.stats.Executes++
	d.changedLocked(pathResult, pathState)
	in := d.cfg.Behaviour.ThinkTime + d.cfg.Behaviour.UpdateDelay
	f.timer = d.clk.AfterFunc(in, d.install)
	d.log.Info("lwm2msim: updating", "in", in)
	return codes.Changed
}

// install ends the update: the package's version, Update Result 1, State 0;
// or the failure Behaviour asks for.
func (d *Device) install() {
	d.mu.Lock()
	defer d.unlock()
	f := &d.fota
	if d.stopped || f.state != messages.FotaStateUpdating || f.job == nil {
		return
	}
	f.timer = nil
	if bu := d.cfg.Behaviour.UpdateResult; bu != 0 && bu != messages.UpdateResultSuccess && !downloadPhaseFailure(bu) {
		d.log.Info("lwm2msim: update fails on purpose", "result", bu)
		f.state, f.result = messages.FotaStateDownloaded, bu
		d.changedLocked(pathResult, pathState)
		d.failed(f.job.event(""), bu)
		return
	}
	v := d.cfg.NewVersion(f.job.pkgID)
	d.fw = v
	d.stats.Upgrades++
	d.log.Info("lwm2msim: firmware updated", "version", v, "reboot", d.cfg.Behaviour.RebootOnUpdate)
	installed := f.job.event(EventInstalled)
	installed.Version = v
	d.event(installed)
	reported := installed
	reported.Kind, reported.Code = EventReported, messages.UpdateResultSuccess
	f.job = nil
	if d.cfg.Behaviour.RebootOnUpdate {
		d.restartLocked("reboot to install the firmware")
		f.state, f.result = messages.FotaStateIdle, messages.UpdateResultSuccess
		f.report = &reported
		return
	}
	f.state, f.result = messages.FotaStateIdle, messages.UpdateResultSuccess
	d.changedLocked(pathFwVersion, pathResult, pathState)
	d.event(reported)
}
