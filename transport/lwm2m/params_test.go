package lwm2m

import (
	"strings"
	"testing"
	"time"
)

// TestRegistrationParams: what a registration leaves out takes the
// protocol's defaults (lt 86400 s, binding U); what an update leaves out
// keeps the registration's own; an empty b is U in both.
func TestRegistrationParams(t *testing.T) {
	for _, tc := range []struct {
		query, body string
		want        regParams // zero: refused
	}{
		{"ep=d1", "", regParams{"d1", 86400 * time.Second, "U"}},
		{"ep=d1&lt=60&b=UQ&lwm2m=1.1", "</3/0>", regParams{"d1", time.Minute, "UQ"}},
		{"ep=d1&b=", "", regParams{"d1", 86400 * time.Second, "U"}},
		{"ep=d1&sms=123", "", regParams{"d1", 86400 * time.Second, "U"}},
		{"lt=60", "", regParams{}},
		{"ep=d1&lt=0", "", regParams{}},
		{"ep=d1&b=T", "", regParams{}},
		{"ep=d1&lwm2m=2.0", "", regParams{}},
		{"ep=a&ep=b", "", regParams{}},
		{"ep=d1", "</3/0", regParams{}},
	} {
		got, err := parseRegistration(strings.Split(tc.query, "&"), []byte(tc.body))
		if (err != nil) != (tc.want == regParams{}) || (err == nil && got != tc.want) {
			t.Errorf("register %q %q: %+v, %v; want %+v", tc.query, tc.body, got, err, tc.want)
		}
	}

	reg := newRegistration("r1", "d1", "127.0.0.1:5000", 5*time.Minute, true)
	for _, tc := range []struct {
		query string
		want  regParams
	}{
		{"", regParams{"d1", 5 * time.Minute, "UQ"}},
		{"lt=60", regParams{"d1", time.Minute, "UQ"}},
		{"b=", regParams{"d1", 5 * time.Minute, "U"}},
		{"b=U&lt=10", regParams{"d1", 10 * time.Second, "U"}},
		{"ep=other", regParams{"d1", 5 * time.Minute, "UQ"}},
	} {
		q, err := parseQueries(strings.Split(tc.query, "&"))
		if err != nil {
			t.Fatal(err)
		}
		if tc.query == "" {
			q = map[string]string{}
		}
		p, err := parseParams(q, nil)
		if got := p.withDefaults(paramsOf(reg)); err != nil || got != tc.want {
			t.Errorf("update %q: %+v, %v; want %+v", tc.query, got, err, tc.want)
		}
	}
}
