package devicefsm

import (
	"errors"
	"fmt"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// Errors returned by Step. Match them with errors.Is.
var (
	// ErrInvalidInput: the input is malformed (no kind, missing IDs, a job
	// that cannot run). Step changes nothing.
	ErrInvalidInput = errors.New("devicefsm: invalid input")
	// ErrInvalidConfig: a Config field is out of range.
	ErrInvalidConfig = errors.New("devicefsm: invalid config")
)

// Config holds the step timeouts of spec 6.1. Every field is a duration that
// must be positive; DefaultConfig gives the spec's values.
type Config struct {
	Online        time.Duration // T1 for LwM2M (FOTA and PCP): 24 h
	OnlineMQTT    time.Duration // T1 for MQTT: 25 h, OnlineMQTTFor(Online)
	VersionReport time.Duration // T2: 3 min
	RadioQuery    time.Duration // T3: 3 min
	CellQuery     time.Duration // T4: 3 min
	DownloadStart time.Duration // T5: 3 min
	Download      time.Duration // T6: 60 min, counted from the notification
	MQTTResult    time.Duration // T7: 24 h, counted from the notification
	UpdateStart   time.Duration // T8: 3 min
	UpdateResult  time.Duration // T9: 30 min
	VersionCheck  time.Duration // T10: 3 min
}

// OnlineMQTTFor is the online wait of an MQTT device (OnlineMQTT) that goes
// with online, the LwM2M one: an hour more, as spec 6.1 T1 has it (24 h for
// LwM2M FOTA and PCP, up to 25 h for MQTT, from the MQTT firmware seed).
func OnlineMQTTFor(online time.Duration) time.Duration { return online + time.Hour }

// DefaultConfig returns the timeouts of spec 6.1 ([P] values: 3 minutes).
func DefaultConfig() Config {
	const online = 24 * time.Hour
	return Config{
		Online:        online,
		OnlineMQTT:    OnlineMQTTFor(online),
		VersionReport: 3 * time.Minute,
		RadioQuery:    3 * time.Minute,
		CellQuery:     3 * time.Minute,
		DownloadStart: 3 * time.Minute,
		Download:      60 * time.Minute,
		MQTTResult:    24 * time.Hour,
		UpdateStart:   3 * time.Minute,
		UpdateResult:  30 * time.Minute,
		VersionCheck:  3 * time.Minute,
	}
}

// Validate reports the first non-positive timeout.
func (c Config) Validate() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"Online", c.Online}, {"OnlineMQTT", c.OnlineMQTT}, {"VersionReport", c.VersionReport},
		{"RadioQuery", c.RadioQuery}, {"CellQuery", c.CellQuery}, {"DownloadStart", c.DownloadStart},
		{"Download", c.Download}, {"MQTTResult", c.MQTTResult}, {"UpdateStart", c.UpdateStart},
		{"UpdateResult", c.UpdateResult}, {"VersionCheck", c.VersionCheck},
	} {
		if f.d <= 0 {
			return fmt.Errorf("%w: %s must be positive, got %v", ErrInvalidConfig, f.name, f.d)
		}
	}
	return nil
}

// State is one device: its presence, reported versions and radio, and at most
// one active job. The zero value with DeviceID set (see New) is an idle,
// offline device.
type State struct {
	DeviceID string

	// Presence.
	Online    bool // a session exists (MQTT connected, LwM2M registered and not expired)
	Awake     bool // a queue-mode device sent an uplink and has not gone to sleep since
	QueueMode bool // LwM2M binding UQ: downlinks wait for the next uplink
	Abnormal  bool // frozen or otherwise unusable: jobs fail to start

	// Reported attributes (kept across jobs).
	FwVersion, SwVersion string
	HasFw, HasSw         bool
	Radio                Radio

	// The active job; nil when idle.
	Job         *messages.Job
	Stage       messages.Stage
	Deadline    time.Time // zero: the stage has no deadline
	Generation  uint64    // bumped each time a deadline is armed
	VerifyCause messages.VerifyCause
	NotifiedAt  time.Time // when the package was announced (T6 and T7 count from here)
	Progress    int32
	UriAcked    bool // FOTA: the device acknowledged the current write of /5/0/1
	// UriHeld (FOTA): the device acknowledged a write of the job's package
	// URI at least once, so it holds that URI: a later write of it that the
	// device refuses is no failure, and none is preceded by a reset.
	UriHeld    bool
	PermitCell string // the cell asked for a slot ("" when none)
	PermitHeld bool   // the cell granted it
	// PermitCellOnly: the radio query failed or lacked RSRP or SINR, so the
	// slot was asked as cell-ID-only (with whatever values it did report).
	PermitCellOnly bool
	// SourceVersion is the version the job's version check compared ("" until
	// then); the job's outcome carries it to the task.
	SourceVersion string
	// PcpExecuteDue (PCP, stage DOWNLOADED): the device's 0x16 was
	// acknowledged and its 0x17 is due but was never sent. The 0x17 goes
	// when the acknowledgement's write is answered, or at the stage's
	// deadline, or at once after a restart (Resume); sending it clears this
	// and arms T8. Without it, DOWNLOADED means the 0x17 was sent, and it is
	// never sent again.
	PcpExecuteDue bool

	// Outbox holds downlinks waiting for the device to become reachable.
	Outbox []*messages.Downlink

	// Last is the outcome of the last finished job, re-sent by Resume so a crash
	// between journaling and reporting loses nothing.
	Last *Last
}

// Radio is the last radio situation the device reported.
type Radio struct {
	RSRP, SINR       int32
	HasRSRP, HasSINR bool
	CellID           string
}

// Last is the outcome of the most recently finished job.
type Last struct {
	Outcome    *messages.ReportOutcome
	Protocol   messages.Protocol
	PermitCell string // the cell whose slot the job released ("" when none)
}

// New returns the state of a registered, offline, idle device.
func New(deviceID string) State { return State{DeviceID: deviceID} }

// Reachable reports whether a downlink can be sent now.
func (s State) Reachable() bool { return s.Online && (!s.QueueMode || s.Awake) }

// Status is the sub-task status of the active job, for the API.
func (s State) Status() messages.SubtaskStatus {
	if s.Job == nil {
		return messages.SubtaskStatus_SUBTASK_STATUS_UNSPECIFIED
	}
	return messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING
}

// DeadlineStep is the DeadlineFired.step of a stage's deadline.
func DeadlineStep(st messages.Stage) string { return st.String() }

// Result is what the caller must do, in order: persist Events (one batch),
// then run Effects.
type Result struct {
	Events  []*messages.DeviceEvent
	Effects []*messages.DeviceEffect
}
