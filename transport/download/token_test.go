package download

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

var testSigner = signer{key: []byte("0123456789abcdef0123456789abcdef")}

func TestTokenRoundTrip(t *testing.T) {
	exp := time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)
	for _, g := range []Grant{
		{},
		{TaskID: "t", DeviceID: "d", Attempt: 1, PackageID: "p"},
		{TaskID: strings.Repeat("x", 128), DeviceID: strings.Repeat("é", 64), Attempt: math.MaxUint32, PackageID: "p.q"},
		{TaskID: "a\x00b", DeviceID: "\xff\xfe", PackageID: "."},
	} {
		tok := testSigner.mint(g, exp)
		if strings.ContainsAny(tok, "+/= ") {
			t.Errorf("token %q is not base64url without padding", tok)
		}
		got, gotExp, err := testSigner.verify(tok, exp.Add(-time.Nanosecond))
		if err != nil || got != g || !gotExp.Equal(exp) {
			t.Errorf("verify(mint(%+v)) = %+v, %v, %v; want the grant and %v", g, got, gotExp, err, exp)
		}
		if _, _, err := testSigner.verify(tok, exp); !errors.Is(err, errExpired) {
			t.Errorf("verify at the expiry: %v, want errExpired", err)
		}
	}
}

func TestTokenExpiryRange(t *testing.T) {
	// Times far from now still round-trip exactly (the expiry is seconds
	// and nanoseconds, not an int64 of nanoseconds).
	g := Grant{PackageID: "p"}
	for _, exp := range []time.Time{
		time.Unix(0, 0).UTC(),
		time.Date(1600, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(3000, 1, 1, 0, 0, 0, 999999999, time.UTC),
	} {
		got, gotExp, err := testSigner.parse(testSigner.mint(g, exp))
		if err != nil || got != g || !gotExp.Equal(exp) {
			t.Errorf("parse(mint(%v)) = %+v, %v, %v", exp, got, gotExp, err)
		}
	}
}

func TestTokenRefused(t *testing.T) {
	exp := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	g := Grant{TaskID: "t", DeviceID: "d", Attempt: 3, PackageID: "p"}
	good := testSigner.mint(g, exp)
	payload := encodePayload(g, exp)
	p64, m64, _ := strings.Cut(good, ".")

	nonMinimal := append([]byte(nil), payload[:fixedLen]...)
	nonMinimal = append(nonMinimal, 0x81, 0x00, 't', 1, 'd', 1, 'p') // 1 as two varint bytes
	badNanos := append([]byte(nil), payload...)
	badNanos[9], badNanos[10], badNanos[11], badNanos[12] = 0x3b, 0x9a, 0xca, 0x00 // 1e9
	badVersion := append([]byte(nil), payload...)
	badVersion[0] = 2

	for _, tc := range []struct {
		name string
		tok  string
		want error
	}{
		{"empty", "", errMalformed},
		{"no dot", p64 + m64, errMalformed},
		{"two dots", p64 + "." + m64 + ".", errMalformed},
		{"empty payload", "." + m64, errMalformed},
		{"short mac", p64 + "." + m64[1:], errMalformed},
		{"padded", p64 + "=." + m64, errMalformed},
		{"std alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(p64) + "x+/." + m64, errMalformed},
		{"non-zero trailing bits", p64 + "." + m64[:len(m64)-1] + "B", errMalformed},
		{"long", strings.Repeat("a", maxTokenLen+1), errMalformed},
		{"wrong key", signer{key: []byte("another key, also 32 bytes long!")}.mint(g, exp), errBadSignature},
		{"mac of another payload", p64 + "." + strings.SplitN(testSigner.mint(Grant{PackageID: "q"}, exp), ".", 2)[1], errBadSignature},
		{"trailing byte", testSigner.token(append(append([]byte(nil), payload...), 0)), errMalformed},
		{"truncated", testSigner.token(payload[:len(payload)-1]), errMalformed},
		{"non-minimal varint", testSigner.token(nonMinimal), errMalformed},
		{"nanoseconds 1e9", testSigner.token(badNanos), errMalformed},
		{"version 2", testSigner.token(badVersion), errMalformed},
		{"fixed part only", testSigner.token(payload[:fixedLen]), errMalformed},
	} {
		if _, _, err := testSigner.verify(tc.tok, exp.Add(-time.Hour)); !errors.Is(err, tc.want) {
			t.Errorf("%s: verify(%q) = %v, want %v", tc.name, tc.tok, err, tc.want)
		}
	}
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		values  []string
		tok     string
		present bool
		err     bool
	}{
		{nil, "", false, false},
		{[]string{"Bearer abc.def"}, "abc.def", true, false},
		{[]string{"bearer abc.def"}, "abc.def", true, false},
		{[]string{"BEARER   abc.def  "}, "abc.def", true, false},
		{[]string{"Bearer\tabc.def"}, "abc.def", true, false},
		{[]string{"Basic dXNlcg=="}, "", false, false},
		{[]string{"abc.def"}, "", false, false},
		{[]string{""}, "", false, false},
		{[]string{"Bearer"}, "", true, true},
		{[]string{"Bearer "}, "", true, true},
		{[]string{"Bearer a b"}, "", true, true},
		{[]string{"Bearer a", "Bearer a"}, "", true, true},
		{[]string{"Bearerabc"}, "", false, false},
	} {
		tok, present, err := bearerToken(tc.values)
		if tok != tc.tok || present != tc.present || (err != nil) != tc.err {
			t.Errorf("bearerToken(%q) = %q, %v, %v; want %q, %v, error %v", tc.values, tok, present, err, tc.tok, tc.present, tc.err)
		}
	}
}

func TestContentDispositionValues(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		// An RFC 7230 token goes bare: a device SDK keeps quotes in the saved name.
		{"fw.bin", `attachment; filename=fw.bin`},
		{"fw-2.0_rc1+b.bin", `attachment; filename=fw-2.0_rc1+b.bin`},
		{"!#$%&'*+-.^_`|~09AZaz", "attachment; filename=!#$%&'*+-.^_`|~09AZaz"},
		// Anything else is quoted: separators, space, the empty name.
		{"fw 2.0.bin", `attachment; filename="fw 2.0.bin"`},
		{"fw{1}.bin", `attachment; filename="fw{1}.bin"`},
		{"a=b", `attachment; filename="a=b"`},
		{"", `attachment; filename=""`},
		{`a"b\c;d.bin`, `attachment; filename="a\"b\\c;d.bin"`},
		{"a\r\nX-Injected: 1", `attachment; filename="a__X-Injected: 1"`},
		{"é.bin", `attachment; filename="_.bin"; filename*=UTF-8''%C3%A9.bin`},
		{"\xff.bin", `attachment; filename="_.bin"; filename*=UTF-8''%EF%BF%BD.bin`},
		{"日本 'x'.bin", `attachment; filename="__ 'x'.bin"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%20%27x%27.bin`},
	} {
		if got := contentDisposition(tc.name); got != tc.want {
			t.Errorf("contentDisposition(%q) =\n\t%s\nwant\n\t%s", tc.name, got, tc.want)
		}
	}
}
