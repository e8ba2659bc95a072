package persistence_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/otafleet/otafleet/persistence"
)

func TestValidateDeviceID(t *testing.T) {
	for _, id := range []string{"dev-1", "sim_0", "Gerät-ä", "863921034567890", "a.b:c@d", "设备"} {
		if err := persistence.ValidateDeviceID(id); err != nil {
			t.Errorf("ValidateDeviceID(%q) = %v", id, err)
		}
	}
	for _, tc := range []struct{ id, why string }{
		{"", "empty ID"},
		{"a/b", "'/'"},
		{"a+b", "contains '+'"},
		{"x/#", "'/'"},
		{"a#", "contains '#'"},
		{"evil\u202egpj.exe", "U+202E"},
		{"zero\u200bwidth", "U+200B"},
		{"bom\ufeff", "U+FEFF"},
		{"c1\u0085", "U+0085"},
		{"del\x7f", "control character"},
		{"bad\xffutf8", "not valid UTF-8"},
		{strings.Repeat("d", persistence.MaxIDLen+1), "longer than"},
	} {
		err := persistence.ValidateDeviceID(tc.id)
		if !errors.Is(err, persistence.ErrInvalid) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("ValidateDeviceID(%q) = %v, want ErrInvalid naming %s", tc.id, err, tc.why)
		}
	}
	// Other IDs keep the key rule: a stored ID read back stays readable.
	if err := persistence.ValidateID("a+b"); err != nil {
		t.Errorf("ValidateID(a+b) = %v", err)
	}
}

func TestRecordKeys(t *testing.T) {
	for _, tc := range []struct {
		st  persistence.Stream
		key string
	}{
		{persistence.Stream{Kind: persistence.KindTask, ID: "t1"}, "row/\x00\x00\x00\x01"},
		{persistence.Stream{Kind: persistence.KindDevice, ID: "a"}, "/"},
		{persistence.Stream{Kind: persistence.KindCell, ID: "c"}, strings.Repeat("\xff", persistence.MaxRecordKeyLen)},
	} {
		k := persistence.RecordKey(tc.st, []byte(tc.key))
		st, key, err := persistence.ParseRecordKey(k)
		if err != nil || st != tc.st || string(key) != tc.key {
			t.Errorf("ParseRecordKey(%q) = %v, %q, %v; want %v, %q", k, st, key, err, tc.st, tc.key)
		}
	}
	for _, k := range []string{"", "k/", "k/t", "k/t/", "k/t/id", "k/t/id/", "e/t/id/x", "k/x/id/row", "k//id/row", "k/t/id/" + strings.Repeat("x", persistence.MaxRecordKeyLen+1)} {
		if _, _, err := persistence.ParseRecordKey([]byte(k)); !errors.Is(err, persistence.ErrInvalid) {
			t.Errorf("ParseRecordKey(%q) = %v, want ErrInvalid", k, err)
		}
	}
	r := persistence.Record{Key: []byte("k"), Type: persistence.RecordTypeState, Version: 2, Payload: []byte("v")}
	got, err := persistence.DecodeRecord(r.Key, persistence.EncodeRecord(r))
	if err != nil || string(got.Payload) != "v" || got.Type != r.Type || got.Version != 2 {
		t.Errorf("DecodeRecord(EncodeRecord(%+v)) = %+v, %v", r, got, err)
	}
}
