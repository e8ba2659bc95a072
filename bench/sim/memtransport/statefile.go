package memtransport

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// stateHeader is the first line of a state file (see the package doc).
const stateHeader = "otafleet-memtransport-state v1"

// ErrCorruptState is wrapped by the error New returns when the state file is
// damaged anywhere but in its last line.
var ErrCorruptState = errors.New("memtransport: corrupt state file")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// record is the durable part of one simulated device: one JSON line of the
// state file. Each line holds the whole record; the last line of an ID wins.
type record struct {
	ID            string `json:"id"`
	Fw            string `json:"fw"`
	Sw            string `json:"sw"`
	Upgrades      int    `json:"upgrades"`       // completed installs
	Executes      int    `json:"executes"`       // LwM2M Executes of /5/0/2 received
	PCPExecutes   int    `json:"pcp_executes"`   // PCP 0x17 received
	UpgradeEvents int    `json:"upgrade_events"` // MQTT upgrade events received
	URIWrites     int    `json:"uri_writes"`     // writes of a package URI to /5/0/1
	Downloads     int    `json:"downloads"`      // downloads started (resumptions excluded)
	Drops         int    `json:"drops"`          // downloads interrupted by Behaviour.DropMidDownload
	Refusals      int    `json:"refusals"`       // Executes refused by Behaviour.RefuseExecutes
	// Installing is the version an accepted Execute (or a finished MQTT
	// download) is installing; a reload completes the install.
	Installing   string `json:"installing,omitempty"`
	InstallingSw bool   `json:"installing_sw,omitempty"`
	// FotaResult is object 5's Update Result, kept across a restart so that a
	// re-observation after an install reports 1.
	FotaResult int32 `json:"fota_result,omitempty"`
	// PCPResultPending: a 0x18 was sent and not acknowledged; the device
	// repeats it when /19/0/0 is observed again.
	PCPResultPending bool `json:"pcp_result_pending,omitempty"`
	// PCPDownloaded is the version of a PCP package downloaded in full and
	// not yet installing: a device keeps it across a restart (spec 4.5: it
	// may report it downloaded, 0x16, again) and installs it on a 0x17.
	PCPDownloaded string `json:"pcp_downloaded,omitempty"`
	// MQTTDownload is the version an MQTT device is downloading: it keeps the
	// URL and token of the upgrade event, and resumes after a reconnect or a
	// restart as device SDKs do (HTTP Range).
	MQTTDownload   string `json:"mqtt_download,omitempty"`
	MQTTDownloadSw bool   `json:"mqtt_download_sw,omitempty"`
}

// stateFile is an append-only log of records, each line synced before the
// device acts on it.
// Appends from many devices share fsyncs (group commit): an appender whose
// line a sync that started after its write already covered returns at once.
type stateFile struct {
	path string

	mu      sync.Mutex // guards f and written
	f       *os.File
	written uint64 // lines written

	syncMu  sync.Mutex // one fsync at a time; guards synced
	synced  uint64     // lines known synced
	syncErr error      // sticky: after a failed sync the file is suspect
}

// openStateFile opens or creates path, returns the last record of every
// device in it, and truncates a torn last line so that appends start on a
// line boundary.
func openStateFile(path string) (*stateFile, map[string]record, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("memtransport: open state file: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("memtransport: read state file %s: %w", path, err)
	}
	recs, good, err := parseState(data)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w %s: %w", ErrCorruptState, path, err)
	}
	sf := &stateFile{f: f, path: path}
	if good == 0 {
		// New, empty, or torn inside its header: start afresh.
		if err := sf.rewrite([]byte(stateHeader + "\n")); err != nil {
			f.Close()
			return nil, nil, err
		}
		if err := syncDir(filepath.Dir(path)); err != nil {
			f.Close()
			return nil, nil, err
		}
		return sf, recs, nil
	}
	if good < len(data) {
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("memtransport: truncate the torn last line of %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("memtransport: sync %s: %w", path, err)
		}
	}
	if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("memtransport: seek %s: %w", path, err)
	}
	return sf, recs, nil
}

// parseState decodes a state file. It returns the records by device ID and
// the length of the valid prefix: 0 for an empty file or one torn inside its
// header line. Only the last line may be damaged.
func parseState(data []byte) (map[string]record, int, error) {
	recs := map[string]record{}
	if len(data) == 0 {
		return recs, 0, nil
	}
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 {
		if bytes.HasPrefix([]byte(stateHeader), data) {
			return recs, 0, nil // torn while writing the header
		}
		return nil, 0, fmt.Errorf("line 1: not a state file header (want %q)", stateHeader)
	}
	if string(data[:nl]) != stateHeader {
		return nil, 0, fmt.Errorf("line 1: %q is not the header %q", truncate(data[:nl]), stateHeader)
	}
	off := nl + 1
	for lineNo := 2; off < len(data); lineNo++ {
		rest := data[off:]
		end := bytes.IndexByte(rest, '\n')
		last := end < 0 || off+end+1 == len(data)
		if end < 0 {
			return recs, off, nil // torn: no newline
		}
		r, err := parseLine(rest[:end])
		if err != nil {
			if last {
				return recs, off, nil // torn last line
			}
			return nil, 0, fmt.Errorf("line %d: %w", lineNo, err)
		}
		recs[r.ID] = r
		off += end + 1
	}
	return recs, off, nil
}

// parseLine decodes "<crc32c as 8 hex digits> <json>".
func parseLine(line []byte) (record, error) {
	if len(line) < 10 || line[8] != ' ' {
		return record{}, fmt.Errorf("malformed line %q", truncate(line))
	}
	want, err := strconv.ParseUint(string(line[:8]), 16, 32)
	if err != nil {
		return record{}, fmt.Errorf("malformed checksum %q", line[:8])
	}
	body := line[9:]
	if got := crc32.Checksum(body, castagnoli); got != uint32(want) {
		return record{}, fmt.Errorf("checksum mismatch (stored %08x, computed %08x)", want, got)
	}
	var r record
	if err := json.Unmarshal(body, &r); err != nil {
		return record{}, fmt.Errorf("bad record: %w", err)
	}
	if r.ID == "" {
		return record{}, fmt.Errorf("record without id")
	}
	return r, nil
}

func formatLine(r record) ([]byte, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	line := fmt.Appendf(nil, "%08x ", crc32.Checksum(body, castagnoli))
	line = append(line, body...)
	return append(line, '\n'), nil
}

func truncate(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "..."
	}
	return string(b)
}

// append writes r as one line and syncs the file.
func (s *stateFile) append(r record) error {
	line, err := formatLine(r)
	if err != nil {
		return fmt.Errorf("memtransport: encode record of %s: %w", r.ID, err)
	}
	s.mu.Lock()
	if s.f == nil {
		s.mu.Unlock()
		return fmt.Errorf("memtransport: state file %s is closed", s.path)
	}
	if _, err := s.f.Write(line); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("memtransport: append to %s: %w", s.path, err)
	}
	s.written++
	mine, f := s.written, s.f
	s.mu.Unlock()

	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.syncErr != nil {
		return s.syncErr
	}
	if s.synced >= mine {
		return nil // a sync that started after our write covered it
	}
	s.mu.Lock()
	upto := s.written
	s.mu.Unlock()
	if err := f.Sync(); err != nil {
		s.syncErr = fmt.Errorf("memtransport: sync %s: %w", s.path, err)
		return s.syncErr
	}
	s.synced = upto
	return nil
}

// rewrite replaces the file's content with data and syncs it.
func (s *stateFile) rewrite(data []byte) error {
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("memtransport: truncate %s: %w", s.path, err)
	}
	if _, err := s.f.WriteAt(data, 0); err != nil {
		return fmt.Errorf("memtransport: write %s: %w", s.path, err)
	}
	if _, err := s.f.Seek(int64(len(data)), io.SeekStart); err != nil {
		return fmt.Errorf("memtransport: seek %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("memtransport: sync %s: %w", s.path, err)
	}
	return nil
}

func (s *stateFile) close() error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("memtransport: open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("memtransport: sync directory %s: %w", dir, err)
	}
	return nil
}
