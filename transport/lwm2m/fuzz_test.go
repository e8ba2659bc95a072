package lwm2m

import (
	"strings"
	"testing"
)

// FuzzParseRegistration: any registration query and body is accepted or
// refused with an error, never a panic; an accepted one has an endpoint
// and a positive lifetime.
func FuzzParseRegistration(f *testing.F) {
	f.Add("ep=d1&lt=60&lwm2m=1.1&b=UQ", `</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</5/0>`)
	f.Add("ep=&lt=0", "</3/0")
	f.Add("ep=a&ep=b", "")
	f.Fuzz(func(t *testing.T, query, body string) {
		p, err := parseRegistration(strings.Split(query, "&"), []byte(body))
		if err == nil && (p.endpoint == "" || p.lifetime <= 0) {
			t.Fatalf("accepted %q %q as %+v", query, body, p)
		}
	})
}
