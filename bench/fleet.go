package bench

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/otafleet/otafleet/messages"
)

// The protocols a simulated device speaks.
const (
	ProtoMQTT  = "mqtt"  // IoTDA MQTT, firmware over HTTPS
	ProtoLwM2M = "lwm2m" // LwM2M FOTA (object 5, Block2)
	ProtoPCP   = "pcp"   // LwM2M software upgrade over PCP (object 19)
	ProtoMixed = "mixed" // mqtt, lwm2m and pcp in turn: device i speaks Mix[i%3]
)

// Mix lists the protocols of ProtoMixed, in the order device numbers take
// them.
var Mix = []string{ProtoMQTT, ProtoLwM2M, ProtoPCP}

// Protocols expands a --protocol value into the protocols devices take in
// turn.
func Protocols(p string) ([]string, error) {
	switch p {
	case ProtoMQTT, ProtoLwM2M, ProtoPCP:
		return []string{p}, nil
	case ProtoMixed:
		return Mix, nil
	}
	return nil, fmt.Errorf("protocol %q: want mqtt, lwm2m, pcp or mixed", p)
}

// Coverage levels of --coverage.
const (
	CoverageGood   = "good"
	CoverageMedium = "medium"
	CoveragePoor   = "poor"
	CoverageMixed  = "mixed"
)

// Radio values the simulated devices report per level (spec 1: good is RSRP
// ≥ -105 dBm and SINR ≥ 7 dB, medium ≥ -115 and ≥ -3, poor below).
var radio = map[string][2]int32{
	CoverageGood:   {-90, 15},
	CoverageMedium: {-110, 0},
	CoveragePoor:   {-120, -5},
}

// Fleet describes the simulated devices: which protocol, cell, coverage and
// fate each has. Every property is derived from the device number alone, so
// `otafleet sim --register` and a later `otafleet sim` (or several sim
// processes, each with its own range) agree on each device.
type Fleet struct {
	Protocols []string // device i speaks Protocols[i%len]
	Devices   int      // how many devices in all: numbers First … First+Devices-1
	First     int
	Prefix    string // device i is Prefix + i, without padding
	Cells     int    // LwM2M devices are spread over cells 1 … Cells
	Coverage  string // good, medium, poor or mixed
	FailRate  float64
	// SecretSeed derives every device's MQTT secret and DTLS PSK.
	SecretSeed string
}

// Validate checks the fleet's description.
func (f Fleet) Validate() error {
	var errs []error
	if len(f.Protocols) == 0 {
		errs = append(errs, errors.New("no protocol"))
	}
	if f.Devices < 1 {
		errs = append(errs, fmt.Errorf("devices %d: want at least 1", f.Devices))
	}
	if f.First < 0 {
		errs = append(errs, fmt.Errorf("first %d: want 0 or more", f.First))
	}
	if f.Prefix == "" || strings.ContainsAny(f.Prefix, "/ \t\r\n") {
		errs = append(errs, fmt.Errorf("id prefix %q: want a non-empty prefix without '/' or spaces", f.Prefix))
	}
	if f.Cells < 1 {
		errs = append(errs, fmt.Errorf("cells %d: want at least 1", f.Cells))
	}
	switch f.Coverage {
	case CoverageGood, CoverageMedium, CoveragePoor, CoverageMixed:
	default:
		errs = append(errs, fmt.Errorf("coverage %q: want good, medium, poor or mixed", f.Coverage))
	}
	if !(f.FailRate >= 0 && f.FailRate <= 1) {
		errs = append(errs, fmt.Errorf("fail rate %v: want 0 to 1", f.FailRate))
	}
	return errors.Join(errs...)
}

// Device is one simulated device as Fleet derives it.
type Device struct {
	N        int
	ID       string
	Protocol string
	// Cell and Coverage: LwM2M devices only (MQTT devices report no radio).
	Cell     int64
	Coverage string
	RSRP     int32
	SINR     int32
	// Fail: the device fails its upgrade with Code (MQTT result_code, LwM2M
	// Update Result, or PCP result code at step FailAt).
	Fail   bool
	Code   int
	FailAt messages.PcpCode
	Secret string // MQTT password secret
	PSK    []byte // DTLS pre-shared key (16 bytes)
	// Think scales the fleet's think time for this device, 0.5 to 1.5, so
	// that devices do not act in lockstep.
	Think float64
}

// hash01 maps (seed, id, salt) to a number in [0, 1).
func hash01(parts ...string) float64 {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return float64(binary.BigEndian.Uint64(h[:8])>>11) / (1 << 53)
}

// Failure codes a failing device reports, one per device in turn: the
// device-side causes users meet most (spec 2.6, 3.6, 4.6).
var (
	mqttFailCodes  = []int{4, 10, 5} // low battery (at once), installing failed (after downloading), no storage
	lwm2mFailCodes = []int{messages.UpdateResultUpdateFailed, messages.UpdateResultIntegrityCheck, messages.UpdateResultNotEnoughStorage}
	pcpFailSteps   = []messages.PcpCode{messages.PcpCodeNotifyNewVersion, messages.PcpCodeReportDownloadResult, messages.PcpCodeReportUpgradeResult}
	pcpFailCodes   = []int{messages.PcpResultLowBattery, messages.PcpResultInsufficientStorage, messages.PcpResultInstallFailed}
)

// Device derives device number n (First ≤ n < First+Devices).
func (f Fleet) Device(n int) Device {
	d := Device{N: n, ID: fmt.Sprintf("%s%d", f.Prefix, n), Protocol: f.Protocols[n%len(f.Protocols)]}
	sec := sha256.Sum256([]byte(f.SecretSeed + "\x00secret\x00" + d.ID))
	d.Secret = hex.EncodeToString(sec[:16])
	psk := sha256.Sum256([]byte(f.SecretSeed + "\x00psk\x00" + d.ID))
	d.PSK = psk[:16]
	d.Think = 0.5 + hash01(f.SecretSeed, d.ID, "think")
	if d.Protocol != ProtoMQTT {
		// Spread over the cells by the device's rank within its protocol,
		// so that each protocol covers every cell.
		d.Cell = int64(1 + (n/len(f.Protocols))%f.Cells)
		d.Coverage = f.Coverage
		if f.Coverage == CoverageMixed {
			switch x := hash01(f.SecretSeed, d.ID, "coverage"); {
			case x < 0.75:
				d.Coverage = CoverageGood
			case x < 0.95:
				d.Coverage = CoverageMedium
			default:
				d.Coverage = CoveragePoor
			}
		}
		d.RSRP, d.SINR = radio[d.Coverage][0], radio[d.Coverage][1]
	}
	if f.FailRate > 0 && hash01(f.SecretSeed, d.ID, "fail") < f.FailRate {
		d.Fail = true
		k := int(hash01(f.SecretSeed, d.ID, "code") * 3)
		switch d.Protocol {
		case ProtoMQTT:
			d.Code = mqttFailCodes[k]
		case ProtoLwM2M:
			d.Code = lwm2mFailCodes[k]
		case ProtoPCP:
			d.Code, d.FailAt = pcpFailCodes[k], pcpFailSteps[k]
		}
	}
	return d
}

// IDs returns the device IDs of the fleet speaking protocol p.
func (f Fleet) IDs(p string) []string {
	var ids []string
	for n := f.First; n < f.First+f.Devices; n++ {
		if f.Protocols[n%len(f.Protocols)] == p {
			ids = append(ids, fmt.Sprintf("%s%d", f.Prefix, n))
		}
	}
	return ids
}
