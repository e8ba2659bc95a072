package iotda

import (
	"strconv"
	"unicode/utf8"

	"github.com/otafleet/otafleet/messages"
)

// decodeUplinkFast decodes the uplinks devices send, without
// encoding/json's reflection (two thirds of the broker's CPU for a report
// went to it): an envelope whose services are all $ota version reports and
// progress reports, written plainly. It reports false, having decided
// nothing, for any payload outside that narrow form, which decodeUplinkJSON
// then decodes: a key it does not expect (encoding/json would match one in
// another case, or ignore it), a key given twice, a string with an escape
// or a byte that is not plain UTF-8, null, a number that is not a plain
// integer, an event it would not accept, another service or event, more
// than MaxServices services, anything after the envelope. So when it
// reports true its Uplink is what decodeUplinkJSON gives (FuzzDecodeUplink).
func decodeUplinkFast(deviceID string, payload []byte) (Uplink, bool) {
	if len(payload) > MaxPayload {
		return Uplink{}, false
	}
	s := scanner{b: payload}
	var out Uplink
	var seenDevice, seenServices bool
	if !s.open('{') {
		return Uplink{}, false
	}
	for more := !s.close('}'); more; {
		key, ok := s.key()
		if !ok {
			return Uplink{}, false
		}
		switch string(key) {
		case "object_device_id":
			v, ok := s.str()
			if !ok || seenDevice || (len(v) > 0 && string(v) != deviceID) {
				return Uplink{}, false
			}
			seenDevice = true
		case "services":
			if seenServices || !s.services(&out) {
				return Uplink{}, false
			}
			seenServices = true
		default:
			return Uplink{}, false
		}
		if more, ok = s.next('}'); !ok {
			return Uplink{}, false
		}
	}
	s.space()
	if !seenServices || s.i != len(s.b) {
		return Uplink{}, false
	}
	return out, true
}

// scanner reads a JSON text from b[i:].
type scanner struct {
	b []byte
	i int
}

// space skips JSON whitespace.
func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// open reads c (after whitespace).
func (s *scanner) open(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// close reads c if it comes next (after whitespace): an empty object or
// array.
func (s *scanner) close(c byte) bool { return s.open(c) }

// next reads what follows a member or an element: a comma (more: true), or
// the closing c.
func (s *scanner) next(c byte) (more, ok bool) {
	s.space()
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case ',':
			s.i++
			return true, true
		case c:
			s.i++
			return false, true
		}
	}
	return false, false
}

// key reads a member's name and its colon.
func (s *scanner) key() ([]byte, bool) {
	k, ok := s.str()
	if !ok || !s.open(':') {
		return nil, false
	}
	return k, true
}

// str reads a string without escapes, of valid UTF-8 and no control
// characters, and returns its bytes (a part of b).
func (s *scanner) str() ([]byte, bool) {
	if !s.open('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, utf8.Valid(v)
		case c == '\\' || c < 0x20:
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// int32 reads a plain JSON integer (-?(0|[1-9][0-9]*)) that fits in an
// int32, as int32Of parses a json.Number.
func (s *scanner) int32() (int32, bool) {
	s.space()
	start := s.i
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	digits := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	n := s.i - digits
	if n == 0 || (n > 1 && s.b[digits] == '0') {
		return 0, false
	}
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	v, err := strconv.ParseInt(string(s.b[start:s.i]), 10, 32)
	return int32(v), err == nil
}

// services reads the services array into out.
func (s *scanner) services(out *Uplink) bool {
	if !s.open('[') || s.close(']') { // no services: decodeUplinkJSON's error
		return false
	}
	for more := true; more; {
		if len(out.Inputs) == MaxServices {
			return false
		}
		in, ok := s.service()
		if !ok {
			return false
		}
		out.Inputs = append(out.Inputs, in)
		if more, ok = s.next(']'); !ok {
			return false
		}
	}
	return true
}

// paras are the members of an $ota event's paras: each of the version
// report's and the progress report's, with whether it was given.
type paras struct {
	fw, sw, version, description             []byte
	hasFw, hasSw, hasVersion, hasDescription bool
	resultCode, progress                     int32
	hasResultCode, hasProgress               bool
}

// service reads one service: an $ota version report or progress report, as
// decodeOTA decodes it.
func (s *scanner) service() (*messages.DeviceInput, bool) {
	var id, event []byte
	var hasID, hasEvent, hasTime, hasParas bool
	var p paras
	if !s.open('{') || s.close('}') {
		return nil, false
	}
	for more := true; more; {
		key, ok := s.key()
		if !ok {
			return nil, false
		}
		switch string(key) {
		case "service_id":
			id, ok = s.str()
			ok = ok && !hasID
			hasID = true
		case "event_type":
			event, ok = s.str()
			ok = ok && !hasEvent
			hasEvent = true
		case "event_time":
			_, ok = s.str()
			ok = ok && !hasTime
			hasTime = true
		case "paras":
			ok = !hasParas && s.paras(&p)
			hasParas = true
		default:
			ok = false
		}
		if !ok {
			return nil, false
		}
		if more, ok = s.next('}'); !ok {
			return nil, false
		}
	}
	if string(id) != ServiceOTA || !hasParas {
		return nil, false
	}
	switch string(event) {
	case EventVersionReport:
		if !p.hasFw && !p.hasSw {
			return nil, false
		}
		v := &messages.VersionReported{}
		if p.hasFw {
			if len(p.fw) > maxVersion {
				return nil, false
			}
			fw := string(p.fw)
			v.FwVersion = &fw
		}
		if p.hasSw {
			if len(p.sw) > maxVersion {
				return nil, false
			}
			sw := string(p.sw)
			v.SwVersion = &sw
		}
		return &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: v}}, true
	case EventProgressReport:
		if !p.hasResultCode || !p.hasVersion || len(p.version) > maxVersion || len(p.description) > 4096 {
			return nil, false
		}
		m := &messages.MqttProgress{ResultCode: p.resultCode, Version: string(p.version), Description: string(p.description)}
		if p.hasProgress {
			if p.progress < 0 || p.progress > 100 {
				return nil, false
			}
			pr := p.progress
			m.Progress = &pr
		}
		return &messages.DeviceInput{Kind: &messages.DeviceInput_MqttProgress{MqttProgress: m}}, true
	}
	return nil, false
}

// paras reads an event's paras object into p. A member of the other report
// is read too (with its type): encoding/json ignores it, and so does
// service.
func (s *scanner) paras(p *paras) bool {
	if !s.open('{') {
		return false
	}
	if s.close('}') {
		return true
	}
	for more := true; more; {
		key, ok := s.key()
		if !ok {
			return false
		}
		switch string(key) {
		case "fw_version":
			p.fw, ok = s.str()
			ok = ok && !p.hasFw
			p.hasFw = true
		case "sw_version":
			p.sw, ok = s.str()
			ok = ok && !p.hasSw
			p.hasSw = true
		case "version":
			p.version, ok = s.str()
			ok = ok && !p.hasVersion
			p.hasVersion = true
		case "description":
			p.description, ok = s.str()
			ok = ok && !p.hasDescription
			p.hasDescription = true
		case "result_code":
			p.resultCode, ok = s.int32()
			ok = ok && !p.hasResultCode
			p.hasResultCode = true
		case "progress":
			p.progress, ok = s.int32()
			ok = ok && !p.hasProgress
			p.hasProgress = true
		default:
			ok = false
		}
		if !ok {
			return false
		}
		if more, ok = s.next('}'); !ok {
			return false
		}
	}
	return true
}
