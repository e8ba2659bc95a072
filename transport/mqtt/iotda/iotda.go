// Package iotda is the wire format of IoTDA-style MQTT devices (spec section
// 2): topic names, the CONNECT identity (client ID and HMAC password), and
// the JSON events of the $ota service in both directions. It is pure: no
// sockets and no clock (times come in as arguments).
//
// Server side: ParseClientID, CheckPassword, CheckTimestamp, ParseTopic,
// DecodeUplink, EncodeVersionQuery, EncodeUpgrade. Device side (simulators):
// DecodeDownlink, EncodeVersionReport, EncodeProgress, Password.
//
//	$oc/devices/{device_id}/sys/events/up    device → platform
//	$oc/devices/{device_id}/sys/events/down  platform → device
//
//	{"object_device_id": "...",               optional; the topic's device
//	 "services": [{"service_id": "$ota",
//	               "event_type": "version_report",
//	               "event_time": "20251212T121212Z",  optional
//	               "paras": {...}}]}
package iotda

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/otafleet/otafleet/messages"
)

// Service and event names (spec 2.3, 2.4).
const (
	ServiceOTA = "$ota"

	EventVersionQuery    = "version_query"
	EventVersionReport   = "version_report"
	EventFirmwareUpgrade = "firmware_upgrade"
	EventSoftwareUpgrade = "software_upgrade"
	EventProgressReport  = "upgrade_progress_report"
)

// MaxPayload is the largest publish IoTDA accepts (spec 2.1).
const MaxPayload = 1 << 20

// MaxServices is the most services one uplink may carry. A device reports
// one or two events at a time; a payload with more is refused whole, before
// any of its services is decoded, so a flood of events in one publish costs
// the engine nothing.
const MaxServices = 32

// Keep-alive bounds of a device connection in seconds (spec 2.1).
const (
	MinKeepAlive = 30
	MaxKeepAlive = 1200
)

const topicPrefix = "$oc/devices/"

// upSuffix ends a device's up topic.
const upSuffix = "/sys/events/up"

// UpTopic is the topic a device publishes its events on.
func UpTopic(deviceID string) string { return topicPrefix + deviceID + upSuffix }

// IsUpTopic reports whether topic is UpTopic(deviceID), without building it.
func IsUpTopic(topic, deviceID string) bool {
	return len(topic) == len(topicPrefix)+len(deviceID)+len(upSuffix) && strings.HasPrefix(topic, topicPrefix) &&
		strings.HasSuffix(topic, upSuffix) && topic[len(topicPrefix):len(topicPrefix)+len(deviceID)] == deviceID
}

// DownTopic is the topic the platform publishes a device's events on.
func DownTopic(deviceID string) string { return topicPrefix + deviceID + "/sys/events/down" }

// ParseTopic returns the device ID of a topic under $oc/devices/{device_id}/
// and the rest of the topic after it; false for any other topic (or one whose
// device ID is empty or holds a wildcard).
func ParseTopic(topic string) (deviceID, rest string, ok bool) {
	after, found := strings.CutPrefix(topic, topicPrefix)
	if !found {
		return "", "", false
	}
	deviceID, rest, _ = strings.Cut(after, "/")
	if deviceID == "" || strings.ContainsAny(deviceID, "+#") {
		return "", "", false
	}
	return deviceID, rest, true
}

// Client ID (spec 2.1).

// Sign types of a client ID.
const (
	SignNoTimestampCheck = 0 // HMAC-SHA256, the timestamp is not checked
	SignTimestampCheck   = 1 // HMAC-SHA256, the timestamp must be near the platform's clock
)

// TimestampLayout is the client ID's timestamp: the UTC hour.
const TimestampLayout = "2006010215"

// ClientID is a parsed CONNECT client identifier
// {device_id}_{identity_type}_{sign_type}_{YYYYMMDDHH}.
type ClientID struct {
	DeviceID     string
	IdentityType int // 0: device ID (the only one accepted)
	SignType     int // SignNoTimestampCheck or SignTimestampCheck
	Timestamp    string
	Time         time.Time // Timestamp as a UTC time
}

// Errors of ParseClientID.
var (
	ErrClientID = errors.New("iotda: bad client identifier")
)

// ParseClientID parses a client ID. The device ID may itself contain '_': the
// three last fields are split off from the right.
func ParseClientID(s string) (ClientID, error) {
	if len(s) > 256 || !utf8.ValidString(s) {
		return ClientID{}, fmt.Errorf("%w: not a UTF-8 string of at most 256 bytes", ErrClientID)
	}
	parts := strings.Split(s, "_")
	if len(parts) < 4 {
		return ClientID{}, fmt.Errorf("%w: %q is not {device_id}_0_{sign_type}_{YYYYMMDDHH}", ErrClientID, s)
	}
	n := len(parts)
	id := strings.Join(parts[:n-3], "_")
	c := ClientID{DeviceID: id, Timestamp: parts[n-1]}
	if id == "" {
		return ClientID{}, fmt.Errorf("%w: empty device ID", ErrClientID)
	}
	if parts[n-3] != "0" {
		return ClientID{}, fmt.Errorf("%w: identity type %q: only 0 (device ID) is supported", ErrClientID, parts[n-3])
	}
	switch parts[n-2] {
	case "0":
		c.SignType = SignNoTimestampCheck
	case "1":
		c.SignType = SignTimestampCheck
	default:
		return ClientID{}, fmt.Errorf("%w: sign type %q: want 0 or 1", ErrClientID, parts[n-2])
	}
	if len(c.Timestamp) != len(TimestampLayout) {
		return ClientID{}, fmt.Errorf("%w: timestamp %q is not YYYYMMDDHH", ErrClientID, c.Timestamp)
	}
	t, err := time.Parse(TimestampLayout, c.Timestamp)
	if err != nil {
		return ClientID{}, fmt.Errorf("%w: timestamp %q is not YYYYMMDDHH", ErrClientID, c.Timestamp)
	}
	c.Time = t
	return c, nil
}

// String formats the client ID.
func (c ClientID) String() string {
	return fmt.Sprintf("%s_%d_%d_%s", c.DeviceID, c.IdentityType, c.SignType, c.Timestamp)
}

// NewClientID is the client ID a device with sign type 1 uses at t.
func NewClientID(deviceID string, t time.Time) ClientID {
	ts := t.UTC().Format(TimestampLayout)
	at, _ := time.Parse(TimestampLayout, ts)
	return ClientID{DeviceID: deviceID, SignType: SignTimestampCheck, Timestamp: ts, Time: at}
}

// Password is a device's CONNECT password: the lowercase hex of
// HMAC-SHA256(key = timestamp, message = secret).
func Password(secret, timestamp string) string {
	m := hmac.New(sha256.New, []byte(timestamp))
	m.Write([]byte(secret))
	return hex.EncodeToString(m.Sum(nil))
}

// CheckPassword reports whether password is the device's password for the
// client ID's timestamp (hex in any case), in constant time.
func CheckPassword(secret, timestamp string, password []byte) bool {
	got, err := hex.DecodeString(string(password))
	if err != nil || len(got) != sha256.Size {
		return false
	}
	want, _ := hex.DecodeString(Password(secret, timestamp))
	return hmac.Equal(got, want)
}

// CheckTimestamp checks a sign-type-1 timestamp against the platform's clock:
// the hour it names must start within skew of now (either way).
func CheckTimestamp(c ClientID, now time.Time, skew time.Duration) error {
	if c.SignType != SignTimestampCheck {
		return nil
	}
	// The timestamp names an hour: accept from the hour's start minus skew
	// to its end plus skew.
	if now.Before(c.Time.Add(-skew)) || now.After(c.Time.Add(time.Hour+skew)) {
		return fmt.Errorf("%w: timestamp %s is more than %v from the platform's clock (%s)",
			ErrClientID, c.Timestamp, skew, now.UTC().Format(TimestampLayout))
	}
	return nil
}

// Events.

// EventTimeLayout is the layout of event_time (UTC).
const EventTimeLayout = "20060102T150405Z"

type envelope struct {
	ObjectDeviceID string    `json:"object_device_id,omitempty"`
	Services       []service `json:"services"`
}

// rawEnvelope is an uplink envelope whose services are counted before any
// is decoded.
type rawEnvelope struct {
	ObjectDeviceID string            `json:"object_device_id,omitempty"`
	Services       []json.RawMessage `json:"services"`
}

type service struct {
	ServiceID string          `json:"service_id"`
	EventType string          `json:"event_type"`
	EventTime string          `json:"event_time,omitempty"`
	Paras     json.RawMessage `json:"paras,omitempty"`
}

// Errors of the decoders. ErrTooManyServices is also an ErrMalformed.
var (
	ErrMalformed       = errors.New("iotda: malformed event")
	ErrTooManyServices = fmt.Errorf("%w: too many services", ErrMalformed)
)

// Uplink is a decoded device publish: the inputs for the device's actor, in
// order, and what was left out (other services, unknown $ota events), for a
// debug log.
type Uplink struct {
	Inputs  []*messages.DeviceInput
	Ignored []string
}

type versionReport struct {
	SwVersion *string `json:"sw_version,omitempty"`
	FwVersion *string `json:"fw_version,omitempty"`
}

type progressReport struct {
	ResultCode  *json.Number `json:"result_code"`
	Progress    *json.Number `json:"progress"`
	Version     *string      `json:"version"`
	Description string       `json:"description"`
}

// maxVersion bounds a reported version string.
const maxVersion = 256

// DecodeUplink decodes a publish of device deviceID on its up topic. A
// payload that is not an event envelope, an event of another device
// (object_device_id: gateway mode is not supported) or an $ota event with
// invalid paras fails with ErrMalformed; the other events still count only
// when the whole payload is valid, so a device report is used all or nothing.
// A payload with more than MaxServices services fails with ErrTooManyServices.
//
// A payload is decoded in one pass (envelope); only when that fails is it
// decoded again in parts (decodeUplinkInParts), which finds the error a
// device is told about in the documented order: the envelope, the number of
// services, then each service. Both give the same result for every payload
// (FuzzDecodeUplink).
//
// The plain reports devices send are decoded without encoding/json first
// (decodeUplinkFast); any other payload as described above
// (decodeUplinkJSON), with the same result.
func DecodeUplink(deviceID string, payload []byte) (Uplink, error) {
	if u, ok := decodeUplinkFast(deviceID, payload); ok {
		return u, nil
	}
	return decodeUplinkJSON(deviceID, payload)
}

// decodeUplinkJSON is DecodeUplink with encoding/json.
func decodeUplinkJSON(deviceID string, payload []byte) (Uplink, error) {
	if len(payload) > MaxPayload {
		return Uplink{}, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformed, len(payload), MaxPayload)
	}
	var env envelope
	if err := json.Unmarshal(payload, &env); err != nil {
		return decodeUplinkInParts(deviceID, payload)
	}
	if err := checkEnvelope(deviceID, env.ObjectDeviceID, len(env.Services)); err != nil {
		return Uplink{}, err
	}
	return decodeServices(env.Services)
}

// decodeUplinkInParts is DecodeUplink decoding the envelope, then each
// service.
func decodeUplinkInParts(deviceID string, payload []byte) (Uplink, error) {
	var env rawEnvelope
	if err := json.Unmarshal(payload, &env); err != nil {
		return Uplink{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := checkEnvelope(deviceID, env.ObjectDeviceID, len(env.Services)); err != nil {
		return Uplink{}, err
	}
	services := make([]service, len(env.Services))
	for i, raw := range env.Services {
		if err := json.Unmarshal(raw, &services[i]); err != nil {
			return Uplink{}, fmt.Errorf("%w: services[%d]: %v", ErrMalformed, i, err)
		}
	}
	return decodeServices(services)
}

// checkEnvelope checks an envelope's device and number of services.
func checkEnvelope(deviceID, objectDeviceID string, services int) error {
	if objectDeviceID != "" && objectDeviceID != deviceID {
		return fmt.Errorf("%w: object_device_id %q is not the publishing device %q (gateway mode is not supported)",
			ErrMalformed, objectDeviceID, deviceID)
	}
	if services == 0 {
		return fmt.Errorf("%w: no services", ErrMalformed)
	}
	if services > MaxServices {
		return fmt.Errorf("%w: %d, at most %d", ErrTooManyServices, services, MaxServices)
	}
	return nil
}

// decodeServices decodes the $ota events among services.
func decodeServices(services []service) (Uplink, error) {
	var out Uplink
	for i, s := range services {
		if s.ServiceID != ServiceOTA {
			out.Ignored = append(out.Ignored, fmt.Sprintf("service %q event %q", s.ServiceID, s.EventType))
			continue
		}
		in, err := decodeOTA(s)
		if err != nil {
			return Uplink{}, fmt.Errorf("%w: services[%d] (%s): %v", ErrMalformed, i, s.EventType, err)
		}
		if in == nil {
			out.Ignored = append(out.Ignored, fmt.Sprintf("$ota event %q", s.EventType))
			continue
		}
		out.Inputs = append(out.Inputs, in)
	}
	return out, nil
}

func decodeOTA(s service) (*messages.DeviceInput, error) {
	switch s.EventType {
	case EventVersionReport:
		var p versionReport
		if err := unmarshalParas(s.Paras, &p); err != nil {
			return nil, err
		}
		if p.FwVersion == nil && p.SwVersion == nil {
			return nil, errors.New("neither fw_version nor sw_version")
		}
		for _, v := range []*string{p.FwVersion, p.SwVersion} {
			if v != nil && (len(*v) > maxVersion || !utf8.ValidString(*v)) {
				return nil, fmt.Errorf("version of %d bytes, at most %d", len(*v), maxVersion)
			}
		}
		return &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{
			FwVersion: p.FwVersion, SwVersion: p.SwVersion,
		}}}, nil
	case EventProgressReport:
		var p progressReport
		if err := unmarshalParas(s.Paras, &p); err != nil {
			return nil, err
		}
		if p.ResultCode == nil {
			return nil, errors.New("no result_code")
		}
		code, err := int32Of(*p.ResultCode)
		if err != nil {
			return nil, fmt.Errorf("result_code: %v", err)
		}
		if p.Version == nil {
			return nil, errors.New("no version")
		}
		if len(*p.Version) > maxVersion || len(p.Description) > 4096 {
			return nil, errors.New("version or description too long")
		}
		m := &messages.MqttProgress{ResultCode: code, Version: *p.Version, Description: p.Description}
		if p.Progress != nil {
			pr, err := int32Of(*p.Progress)
			if err != nil || pr < 0 || pr > 100 {
				return nil, fmt.Errorf("progress %s: want an integer 0..100", p.Progress.String())
			}
			m.Progress = &pr
		}
		return &messages.DeviceInput{Kind: &messages.DeviceInput_MqttProgress{MqttProgress: m}}, nil
	}
	return nil, nil
}

func unmarshalParas(raw json.RawMessage, v any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return errors.New("no paras")
	}
	// raw is one valid JSON value, and the paras structs hold numbers as
	// json.Number: Unmarshal decodes it as a Decoder with UseNumber would.
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("paras: %v", err)
	}
	return nil
}

// int32Of parses an integral JSON number that fits in an int32.
func int32Of(n json.Number) (int32, error) {
	v, err := strconv.ParseInt(string(n), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a 32-bit integer", n.String())
	}
	return int32(v), nil
}

// Downlinks.

// UpgradeParas are the paras of firmware_upgrade and software_upgrade (spec
// 2.5). Empty AccessToken, Sign and CustomInfo are left out, and so is a
// zero Expires.
type UpgradeParas struct {
	Version     string `json:"version"`
	URL         string `json:"url"`
	FileSize    int64  `json:"file_size"`
	FileName    string `json:"file_name"`
	AccessToken string `json:"access_token,omitempty"`
	Expires     int64  `json:"expires,omitempty"`
	Sign        string `json:"sign,omitempty"`
	CustomInfo  string `json:"custom_info,omitempty"`
}

func encode(deviceID, eventType string, paras any, now time.Time) []byte {
	s := service{ServiceID: ServiceOTA, EventType: eventType, EventTime: now.UTC().Format(EventTimeLayout)}
	if paras != nil {
		b, err := json.Marshal(paras)
		if err != nil {
			panic(fmt.Sprintf("iotda: encoding %s paras: %v", eventType, err)) // fixed struct types: cannot fail
		}
		s.Paras = b
	}
	b, err := json.Marshal(envelope{ObjectDeviceID: deviceID, Services: []service{s}})
	if err != nil {
		panic(fmt.Sprintf("iotda: encoding %s: %v", eventType, err))
	}
	return b
}

// EncodeVersionQuery is the version_query event for a device (empty paras).
// It is what encode writes (TestEncodeDownlinks), without encoding/json's
// reflection.
func EncodeVersionQuery(deviceID string, now time.Time) []byte {
	b := appendEnvelopeStart(make([]byte, 0, 160), deviceID, EventVersionQuery, now)
	return append(b, "{}}]}"...)
}

// EncodeUpgrade is the firmware_upgrade (software false) or software_upgrade
// event for a device. It is what encode writes (TestEncodeDownlinks,
// FuzzEncodeUpgrade), without encoding/json's reflection.
func EncodeUpgrade(deviceID string, software bool, p UpgradeParas, now time.Time) []byte {
	ev := EventFirmwareUpgrade
	if software {
		ev = EventSoftwareUpgrade
	}
	b := appendEnvelopeStart(make([]byte, 0, 512), deviceID, ev, now)
	b = append(b, `{"version":`...)
	b = appendString(b, p.Version)
	b = append(b, `,"url":`...)
	b = appendString(b, p.URL)
	b = append(b, `,"file_size":`...)
	b = strconv.AppendInt(b, p.FileSize, 10)
	b = append(b, `,"file_name":`...)
	b = appendString(b, p.FileName)
	if p.AccessToken != "" {
		b = append(b, `,"access_token":`...)
		b = appendString(b, p.AccessToken)
	}
	if p.Expires != 0 {
		b = append(b, `,"expires":`...)
		b = strconv.AppendInt(b, p.Expires, 10)
	}
	if p.Sign != "" {
		b = append(b, `,"sign":`...)
		b = appendString(b, p.Sign)
	}
	if p.CustomInfo != "" {
		b = append(b, `,"custom_info":`...)
		b = appendString(b, p.CustomInfo)
	}
	return append(b, "}}]}"...)
}

// appendEnvelopeStart appends an event envelope of one $ota service up to
// its paras' value, as encode writes it.
func appendEnvelopeStart(b []byte, deviceID, eventType string, now time.Time) []byte {
	b = append(b, '{')
	if deviceID != "" {
		b = append(b, `"object_device_id":`...)
		b = appendString(b, deviceID)
		b = append(b, ',')
	}
	b = append(b, `"services":[{"service_id":`...)
	b = appendString(b, ServiceOTA)
	b = append(b, `,"event_type":`...)
	b = appendString(b, eventType)
	b = append(b, `,"event_time":`...)
	b = appendString(b, now.UTC().Format(EventTimeLayout))
	return append(b, `,"paras":`...)
}

// appendString appends s as encoding/json writes a string: as it is when it
// is printable ASCII that needs no escape (what IDs, versions, URLs and
// tokens are), else by encoding/json itself.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string cannot fail
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Downlink is a decoded platform publish, device side.
type Downlink struct {
	ObjectDeviceID string
	EventType      string
	EventTime      string
	// Upgrade holds the paras of firmware_upgrade and software_upgrade.
	Upgrade *UpgradeParas
}

// DecodeDownlink decodes the first $ota event of a publish on a device's
// down topic; false when it holds none.
func DecodeDownlink(payload []byte) (Downlink, bool, error) {
	var env envelope
	if err := json.Unmarshal(payload, &env); err != nil {
		return Downlink{}, false, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	for _, s := range env.Services {
		if s.ServiceID != ServiceOTA {
			continue
		}
		d := Downlink{ObjectDeviceID: env.ObjectDeviceID, EventType: s.EventType, EventTime: s.EventTime}
		if s.EventType == EventFirmwareUpgrade || s.EventType == EventSoftwareUpgrade {
			var p UpgradeParas
			if err := unmarshalParas(s.Paras, &p); err != nil {
				return Downlink{}, false, fmt.Errorf("%w: %s: %v", ErrMalformed, s.EventType, err)
			}
			d.Upgrade = &p
		}
		return d, true, nil
	}
	return Downlink{}, false, nil
}

// EncodeVersionReport is a device's version_report; nil versions are left out.
func EncodeVersionReport(deviceID string, fw, sw *string, now time.Time) []byte {
	return encode(deviceID, EventVersionReport, versionReport{FwVersion: fw, SwVersion: sw}, now)
}

// Progress is the paras of upgrade_progress_report, device side.
type Progress struct {
	ResultCode  int    `json:"result_code"`
	Progress    *int   `json:"progress,omitempty"`
	Version     string `json:"version"`
	Description string `json:"description,omitempty"`
}

// EncodeProgress is a device's upgrade_progress_report.
func EncodeProgress(deviceID string, p Progress, now time.Time) []byte {
	return encode(deviceID, EventProgressReport, p, now)
}
