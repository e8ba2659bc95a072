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
