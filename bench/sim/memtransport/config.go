package memtransport

import (
	"fmt"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// Config configures a Transport. The zero value is usable: zero delays take
// their defaults (see Delays) and no state file is kept.
type Config struct {
	// Delays are the devices' reaction times, in clock time.
	Delays Delays
	// StateFile, when set, keeps the devices' durable facts across restarts
	// (see the package doc for the format). New reloads it; Add applies a
	// device's saved facts over its DeviceSpec.
	StateFile string
	// OnUplink, when set, is called after each uplink (presence or report)
	// was handed to Uplinks.Deliver, with Deliver's error. It runs on the
	// goroutine that delivered, outside the transport's locks.
	OnUplink func(deviceID string, in *messages.DeviceInput, err error)
	// OnUpgrade, when set, is called after a device completed an install,
	// with the version it now runs (Behaviour.WrongVersion included).
	OnUpgrade func(deviceID, version string)
	// AckEarly, when set, picks the confirmable notifications of object 5
	// that are marked no_ack like answers (acknowledged before their step
	// is durable), as a transport might mark those the device machine finds
	// again after a crash (messages.DeviceInput.FoundAgainOnResume).
	AckEarly func(in *messages.DeviceInput) bool
}

// Delays are the reaction times of the simulated devices. A zero field takes
// the default in brackets; tests on the fake clock pay nothing for them.
type Delays struct {
	Network   time.Duration // a downlink in flight before the device sees it [10ms]
	Response  time.Duration // answer to a read, query, observe, write, Execute or PCP request [200ms]
	Download  time.Duration // a whole MQTT or FOTA download [800ms]
	Segment   time.Duration // a PCP segment's processing before the next 0x15 [50ms]
	Install   time.Duration // from the Execute (MQTT: end of download) to the result [500ms]
	Reconnect time.Duration // back online after a dropped connection or a reboot [1s]
}

// DefaultDelays returns the defaults that zero fields of Delays take.
func DefaultDelays() Delays {
	return Delays{
		Network:   10 * time.Millisecond,
		Response:  200 * time.Millisecond,
		Download:  800 * time.Millisecond,
		Segment:   50 * time.Millisecond,
		Install:   500 * time.Millisecond,
		Reconnect: time.Second,
	}
}

func (d Delays) withDefaults() Delays {
	def := DefaultDelays()
	fill := func(v *time.Duration, dv time.Duration) {
		if *v <= 0 {
			*v = dv
		}
	}
	fill(&d.Network, def.Network)
	fill(&d.Response, def.Response)
	fill(&d.Download, def.Download)
	fill(&d.Segment, def.Segment)
	fill(&d.Install, def.Install)
	fill(&d.Reconnect, def.Reconnect)
	return d
}

// DeviceSpec describes one simulated device.
type DeviceSpec struct {
	ID string
	// Protocol is the device's flow: messages.Protocol_PROTOCOL_MQTT,
	// PROTOCOL_LWM2M_FOTA or PROTOCOL_LWM2M_PCP.
	Protocol  messages.Protocol
	FwVersion string // reported by MQTT version queries and reads of /3/0/3
	SwVersion string // reported by PCP 0x13 (and MQTT version queries when set)
	CellID    string // /4/0/8; empty: the device cannot report it (4.04)
	RSRP      *int32 // /4/0/2 in dBm; nil: not reported
	SINR      *int32 // /4/0/11 in dB; nil: not reported
	// QueueMode (LwM2M binding UQ): the device registers in queue mode and
	// can be put to sleep (Sleep, or PSM) and woken (Wake).
	QueueMode bool
	// PSM, for a queue-mode device, makes it sleep and wake by itself.
	PSM *PSM
	// Behaviour injects faults; the zero value is a well-behaved device.
	Behaviour Behaviour
}

// PSM is an automatic power-saving cycle: once awake and idle for Awake, the
// device falls asleep (Asleep), and wakes with a registration update (Uplink)
// Asleep later. A device with a download, an install or a reply in progress
// stays awake (NB-IoT devices leave PSM for a transfer).
type PSM struct {
	Awake  time.Duration
	Asleep time.Duration
}

// Behaviour injects faults into a simulated device. Counts ("the first N")
// are durable with a state file: a restarted simulator does not fail again.
type Behaviour struct {
	// FailDownloads: the first N downloads fail at their end with FailCode,
	// as MQTT result_code, LwM2M Update Result or PCP 0x16 status. A zero
	// FailCode takes the protocol's default: MQTT 7 (package verification
	// failed), FOTA 5 (integrity check failure), PCP 7.
	FailDownloads int
	FailCode      int32
	// Silent: the device receives downlinks and never answers any.
	Silent bool
	// IgnoreUpgrade: the device answers queries and reads but never reacts to
	// an upgrade request (MQTT upgrade event, /5/0/1 write — not even
	// acknowledged —, PCP 0x14).
	IgnoreUpgrade bool
	// DropMidDownload: the first N downloads lose the connection halfway
	// (Disconnected is delivered). The device comes back (Connected) after
	// Delays.Reconnect, unless StayOffline, and resumes: MQTT and FOTA
	// devices by themselves (unless ForgetURIOnReboot), PCP devices when
	// asked again.
	DropMidDownload int
	StayOffline     bool
	// RefuseExecutes: the first N Executes (/5/0/2, PCP 0x17) are refused,
	// with 4.05 for LwM2M and RefuseCode for PCP (default 1, device busy).
	RefuseExecutes int
	RefuseCode     uint32
	// WrongVersion: every install leaves the device on this version instead
	// of the target, while reporting success.
	WrongVersion string
	// StrictURI (FOTA): like real LwM2M clients, the device takes a
	// package URI written to /5/0/1 in State 0 (Idle) only and refuses it
	// with 4.00 otherwise: while it downloads, and in State 2 after a
	// refused Execute, until an empty write resets object 5.
	StrictURI bool
	// ForgetURIOnReboot (FOTA): a device that registers again after a lost
	// connection kept nothing of its download (State 0, Update Result 0);
	// without it the device resumes its download by itself.
	ForgetURIOnReboot bool
	// RebootOnInstall: the device drops its connection when an install
	// completes and registers again after Delays.Reconnect; the engine learns
	// the result from the new session (re-observation, MQTT report on
	// reconnect, PCP 0x18 repeated).
	RebootOnInstall bool
}

func (s DeviceSpec) validate() error {
	if s.ID == "" {
		return fmt.Errorf("memtransport: device spec without ID")
	}
	switch s.Protocol {
	case protoMQTT:
		if s.QueueMode {
			return fmt.Errorf("memtransport: device %s: queue mode is an LwM2M binding, not MQTT", s.ID)
		}
	case protoFOTA, protoPCP:
	default:
		return fmt.Errorf("memtransport: device %s: protocol %v is not MQTT, LwM2M FOTA or PCP", s.ID, s.Protocol)
	}
	if s.PSM != nil && (!s.QueueMode || s.PSM.Awake <= 0 || s.PSM.Asleep <= 0) {
		return fmt.Errorf("memtransport: device %s: PSM needs queue mode and positive Awake and Asleep", s.ID)
	}
	b := s.Behaviour
	if b.FailDownloads < 0 || b.DropMidDownload < 0 || b.RefuseExecutes < 0 {
		return fmt.Errorf("memtransport: device %s: negative behaviour count", s.ID)
	}
	if s.Protocol == protoPCP && b.RefuseCode > 0xFF {
		return fmt.Errorf("memtransport: device %s: PCP refuse code %d exceeds a byte", s.ID, b.RefuseCode)
	}
	if s.Protocol == protoPCP && (b.FailCode < 0 || b.FailCode > 0xFF) {
		return fmt.Errorf("memtransport: device %s: PCP fail code %d is not a byte", s.ID, b.FailCode)
	}
	return nil
}

func (b Behaviour) failCode(p messages.Protocol) int32 {
	if b.FailCode != 0 {
		return b.FailCode
	}
	if p == protoFOTA {
		return 5
	}
	return 7
}

func (b Behaviour) refuseCode() uint32 {
	if b.RefuseCode != 0 {
		return b.RefuseCode
	}
	return 1
}

// Protocol shorthands.
const (
	protoMQTT = messages.Protocol_PROTOCOL_MQTT
	protoFOTA = messages.Protocol_PROTOCOL_LWM2M_FOTA
	protoPCP  = messages.Protocol_PROTOCOL_LWM2M_PCP
)
