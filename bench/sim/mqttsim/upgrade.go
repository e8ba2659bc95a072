package mqttsim

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// Result codes the device reports (spec 2.6).
const (
	codeBusy           = 1
	codeDownloadFailed = 6 // "download timed out"
	codeVerifyFailed   = 7
)

// maxRetries bounds the resumes after a download broken by the network (the
// simulated drop does not count).
const maxRetries = 3

// progressStep is the interval of the intermediate progress reports, in
// percent.
const progressStep = 25

// job is an upgrade event being carried out.
type job struct {
	software bool
	p        iotda.UpgradeParas
}

func (j *job) kind() string {
	if j.software {
		return "software"
	}
	return "firmware"
}

// startUpgrade runs an upgrade event in its own goroutine, one at a time. A
// repeated event for the upgrade in progress is ignored; another one is
// answered result_code 1 (busy).
func (d *Device) startUpgrade(j *job) {
	software, p := j.software, j.p
	d.mu.Lock()
	r := d.running
	if r == nil {
		d.running = j
	}
	d.mu.Unlock()
	if r != nil {
		if r.software == software && r.p.Version == p.Version {
			d.log.Info("mqttsim: repeated upgrade event ignored", "kind", j.kind(), "version", p.Version)
			return
		}
		desc := fmt.Sprintf("busy: upgrading %s to %s", r.kind(), r.p.Version)
		d.event(EventFailed, j, 0, codeBusy)
		if err := d.report(codeBusy, nil, d.version(j), desc); err != nil {
			d.log.Warn("mqttsim: busy report", "err", err)
			return
		}
		d.event(EventReported, j, 0, codeBusy)
		return
	}
	ok := d.goTracked(func() {
		d.upgrade(j)
		d.done(j)
	})
	if !ok {
		d.done(j)
	}
}

// done ends the job: the next upgrade event starts anew. The final report
// comes after, so that an event answering it is not taken for a repeat.
func (d *Device) done(j *job) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running == j {
		d.running = nil
	}
}

// version is the device's current version of the job's kind.
func (d *Device) version(j *job) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if j.software {
		return d.sw
	}
	return d.fw
}

// report publishes an upgrade_progress_report.
func (d *Device) report(code int, progress *int, version, desc string) error {
	d.mu.Lock()
	d.stats.ProgressReports++
	d.mu.Unlock()
	p := iotda.Progress{ResultCode: code, Progress: progress, Version: version, Description: desc}
	return d.publish(iotda.EncodeProgress(d.cfg.DeviceID, p, d.clk.Now()))
}

func (d *Device) progress(j *job, pct int) {
	if err := d.report(0, &pct, d.version(j), ""); err != nil {
		d.log.Warn("mqttsim: progress report", "err", err)
	}
}

func (d *Device) fail(j *job, code int, desc string) {
	d.mu.Lock()
	d.stats.Failures++
	d.mu.Unlock()
	d.done(j)
	d.log.Info("mqttsim: upgrade failed", "kind", j.kind(), "version", j.p.Version, "result_code", code, "description", desc)
	d.event(EventFailed, j, 0, code)
	if err := d.report(code, nil, d.version(j), desc); err != nil {
		d.log.Warn("mqttsim: failure report", "err", err)
		return
	}
	d.event(EventReported, j, 0, code)
}

// upgrade carries out one upgrade event and reports its outcome; it returns
// silently when the device stops.
func (d *Device) upgrade(j *job) {
	b := d.cfg.Behaviour
	if b.FailWith != 0 && !b.FailAfterDownload {
		d.fail(j, b.FailWith, fmt.Sprintf("simulated failure (result_code %d)", b.FailWith))
		return
	}
	if err := d.wait(b.ThinkTime, "thinking"); err != nil {
		return // stopped
	}
	if !b.SkipProgress {
		d.progress(j, 0)
	}
	code, desc, err := d.download(j)
	if err != nil || d.ctx.Err() != nil {
		return // stopped
	}
	if code != 0 {
		d.fail(j, code, desc)
		return
	}
	if b.FailWith != 0 {
		d.fail(j, b.FailWith, fmt.Sprintf("simulated failure after download (result_code %d)", b.FailWith))
		return
	}
	v := j.p.Version
	d.mu.Lock()
	if j.software {
		d.sw = v
	} else {
		d.fw = v
	}
	d.stats.Upgrades++
	d.mu.Unlock()
	d.done(j)
	d.log.Info("mqttsim: upgraded", "kind", j.kind(), "version", v)
	d.event(EventInstalled, j, 0, 0)
	if d.cfg.OnUpgrade != nil {
		d.cfg.OnUpgrade(j.kind(), v)
	}
	hundred := 100
	if err := d.report(0, &hundred, v, ""); err != nil {
		d.log.Warn("mqttsim: final report", "err", err)
		return
	}
	d.event(EventReported, j, 0, 0)
}

// errStopped ends a download when the device stops.
var errStopped = errors.New("mqttsim: stopped")

// wait waits for dur on the device's clock (not at all when dur <= 0: no
// timer is armed); errStopped when the device stops first. Once the timer is
// armed, the test hook waiting is told of what, if not "".
func (d *Device) wait(dur time.Duration, what string) error {
	if d.ctx.Err() != nil {
		return errStopped
	}
	if dur <= 0 {
		return nil
	}
	t := d.clk.NewTimer(dur)
	defer t.Stop()
	if what != "" && d.cfg.waiting != nil {
		d.cfg.waiting(what)
	}
	select {
	case <-t.C():
		return nil
	case <-d.ctx.Done():
		return errStopped
	}
}

// download fetches and verifies the job's package. It returns result_code 0
// when the package is good, else the code and description to report;
// errStopped when the device stops.
func (d *Device) download(j *job) (code int, desc string, err error) {
	p := j.p
	b := d.cfg.Behaviour
	d.mu.Lock()
	d.stats.Downloads++
	var dropAt int64
	if b.DropAfterBytes > 0 && !d.dropped && (p.FileSize <= 0 || b.DropAfterBytes < p.FileSize) {
		d.dropped = true
		dropAt = b.DropAfterBytes
	}
	d.mu.Unlock()
	d.event(EventDownloadStart, j, 0, 0)
	if p.URL == "" {
		return codeDownloadFailed, "download failed: the event has no url", nil
	}

	dl := &download{d: d, j: j, h: sha256.New(), total: p.FileSize, next: progressStep, buf: make([]byte, 32<<10)}
	retries := 0
	for {
		res, err := dl.fetch(dropAt)
		switch {
		case d.ctx.Err() != nil:
			return 0, "", errStopped
		case err != nil:
			var fail *failure
			if errors.As(err, &fail) {
				return fail.code, fail.desc, nil
			}
			if retries >= maxRetries {
				return codeDownloadFailed, fmt.Sprintf("download failed after %d of %d bytes: %v", dl.n, p.FileSize, err), nil
			}
			retries++
			d.log.Info("mqttsim: download broken, resuming", "at", dl.n, "err", err)
			if err := d.wait(b.ReconnectDelay, ""); err != nil {
				return 0, "", err
			}
		case res == fetchDropped:
			dropAt = 0
			gen := d.drop()
			if err := d.waitConnected(gen); err != nil {
				return 0, "", errStopped
			}
			d.log.Info("mqttsim: reconnected, resuming the download", "at", dl.n)
		default: // complete
			d.event(EventDownloadDone, j, dl.n, 0)
			if p.FileSize > 0 && dl.n != p.FileSize {
				return codeVerifyFailed, fmt.Sprintf("package is %d bytes, file_size is %d", dl.n, p.FileSize), nil
			}
			if p.Sign != "" {
				sum := hex.EncodeToString(dl.h.Sum(nil))
				if !strings.EqualFold(sum, p.Sign) {
					return codeVerifyFailed, fmt.Sprintf("SHA-256 %s does not match sign %s", sum, p.Sign), nil
				}
			}
			return 0, "", nil
		}
	}
}

// failure is a download outcome to report as is.
type failure struct {
	code int
	desc string
}

func (f *failure) Error() string { return f.desc }

type fetchResult int

const (
	fetchComplete fetchResult = iota
	fetchDropped              // stopped at dropAt for the simulated drop
)

// download is the state of a download across its HTTP requests.
type download struct {
	d     *Device
	j     *job
	h     hash.Hash
	n     int64 // bytes received and hashed
	total int64 // expected size, for the progress; 0 unknown
	next  int   // the next progress percentage to report
	buf   []byte
}

// fetch makes one HTTP request, from byte n (a Range request when n > 0),
// and reads the body into the hash: to its end, or until dropAt bytes when
// dropAt > 0. A *failure error is final; other errors may be resumed.
func (dl *download) fetch(dropAt int64) (fetchResult, error) {
	d, p := dl.d, dl.j.p
	req, err := http.NewRequestWithContext(d.ctx, http.MethodGet, p.URL, nil)
	if err != nil {
		return 0, &failure{codeDownloadFailed, fmt.Sprintf("download failed: %v", err)}
	}
	if p.AccessToken != "" {
		req.Header.Set("Authorization", "Bearer "+p.AccessToken)
	}
	b := d.cfg.Behaviour
	pace := pacer{rate: b.BytesPerSecond, start: d.clk.Now(), base: dl.n} // this request's pace
	if dl.n > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", dl.n))
		d.mu.Lock()
		d.stats.Resumes++
		d.mu.Unlock()
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && dl.n > 0:
		cr := resp.Header.Get("Content-Range")
		if start, ok := contentRangeStart(cr); !ok || start != dl.n {
			return 0, &failure{codeDownloadFailed, fmt.Sprintf("download failed: HTTP %s with Content-Range %q, asked from byte %d", resp.Status, cr, dl.n)}
		}
	case resp.StatusCode == http.StatusOK:
		if dl.n > 0 {
			d.log.Info("mqttsim: the server ignored the Range request, starting over", "had", dl.n)
			dl.h.Reset()
			dl.n = 0
			dl.next = progressStep
		}
		if dl.total <= 0 && resp.ContentLength > 0 {
			dl.total = resp.ContentLength
		}
	default:
		return 0, &failure{codeDownloadFailed, fmt.Sprintf("download failed: HTTP %s", resp.Status)}
	}
	if dl.n == 0 {
		pace.base = 0 // starting over
	}
	for {
		want := dl.buf
		if b.BytesPerSecond > 0 && b.BytesPerSecond < int64(len(want)) {
			want = want[:b.BytesPerSecond] // at most one second's worth at a time
		}
		if dropAt > 0 {
			rem := dropAt - dl.n
			if rem <= 0 {
				return fetchDropped, nil
			}
			if rem < int64(len(want)) {
				want = want[:rem]
			}
		}
		m, rerr := resp.Body.Read(want)
		if m > 0 {
			chunk := want[:m]
			if b.CorruptDownload && dl.n == 0 {
				chunk[0] ^= 0xff
			}
			dl.h.Write(chunk)
			dl.n += int64(m)
			d.mu.Lock()
			d.stats.BytesDownloaded += int64(m)
			d.mu.Unlock()
			if p.FileSize > 0 && dl.n > p.FileSize {
				return 0, &failure{codeVerifyFailed, fmt.Sprintf("package is larger than file_size %d", p.FileSize)}
			}
			if !b.SkipProgress && dl.total > 0 {
				pct := int(dl.n * 100 / dl.total)
				if pct >= dl.next && pct < 100 {
					d.progress(dl.j, pct)
					dl.next = pct - pct%progressStep + progressStep
				}
			}
			// BytesPerSecond: wait while the bytes are ahead of the pace.
			if err := d.wait(pace.delay(d.clk.Now(), dl.n), "paced"); err != nil {
				return 0, err
			}
		}
		if rerr == io.EOF {
			return fetchComplete, nil
		}
		if rerr != nil {
			return 0, rerr
		}
	}
}

// contentRangeStart parses the first byte of a Content-Range "bytes a-b/c".
func contentRangeStart(s string) (int64, bool) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(first), 10, 64)
	return v, err == nil && v >= 0
}
