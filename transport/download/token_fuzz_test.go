package download

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

var fuzzNow = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// FuzzToken feeds arbitrary strings to the token parser, both as tokens (the
// fuzzer cannot forge a MAC, so these test the framing) and as payloads signed
// with the right key (which test the payload decoder). Nothing panics, and
// whatever is accepted is exactly the token Mint makes for what it decodes to.
func FuzzToken(f *testing.F) {
	g := Grant{TaskID: "task-1", DeviceID: "dev-1", Attempt: 3, PackageID: "fw"}
	good := testSigner.mint(g, fuzzNow.Add(time.Hour))
	f.Add(good)
	f.Add(testSigner.mint(g, fuzzNow.Add(-time.Hour)))
	f.Add(string(encodePayload(g, fuzzNow)))
	f.Add(string(encodePayload(Grant{}, time.Unix(0, 0))))
	f.Add("")
	f.Add(".")
	f.Add("a.b")
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Fuzz(func(t *testing.T, s string) {
		// As a token.
		if g, exp, err := testSigner.verify(s, fuzzNow); err == nil || errors.Is(err, errExpired) {
			if again := testSigner.mint(g, exp); again != s {
				t.Fatalf("accepted %q, which decodes to %+v expiring %v, but Mint makes %q", s, g, exp, again)
			}
		} else if !errors.Is(err, errMalformed) && !errors.Is(err, errBadSignature) {
			t.Fatalf("verify(%q): unexpected error %v", s, err)
		}

		// As a payload with a valid MAC.
		tok := testSigner.token([]byte(s))
		g, exp, err := testSigner.parse(tok)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatalf("parse of a signed payload %q: %v, want errMalformed or success", s, err)
			}
			return
		}
		if got := string(encodePayload(g, exp)); got != s {
			t.Fatalf("payload %q decodes to %+v expiring %v, which encodes to %q", s, g, exp, got)
		}
		g2, exp2, err := testSigner.verify(testSigner.mint(g, exp), exp.Add(-time.Nanosecond))
		if err != nil || g2 != g || !exp2.Equal(exp) {
			t.Fatalf("re-minted %+v expiring %v verifies as %+v, %v, %v", g, exp, g2, exp2, err)
		}
	})
}

// FuzzRequestHeaders sends requests with arbitrary Authorization, Range,
// If-Range and If-None-Match values through the whole handler: it never
// panics, answers only with expected statuses, and sends only the package's
// bytes.
func FuzzRequestHeaders(f *testing.F) {
	ctx := context.Background()
	st := memstore.New()
	if err := st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolMQTT}); err != nil {
		f.Fatal(err)
	}
	content := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	size, sum, err := st.WriteBlob(ctx, "fw", bytes.NewReader(content), 1<<20)
	if err != nil {
		f.Fatal(err)
	}
	if err := st.PutPackage(ctx, persistence.Package{ID: "fw", ProductID: "p", Type: persistence.PackageFirmware,
		Version: "2.0", FileName: "fw.bin", Size: size, SHA256: sum, Created: fuzzNow.Add(-time.Hour)}); err != nil {
		f.Fatal(err)
	}
	var served struct{ offset, n int64 }
	s, err := New(Config{
		Packages: st, Key: testSigner.key, Clock: clocktest.New(fuzzNow),
		OnServed: func(_ Grant, offset, n, _ int64) { served.offset, served.n = offset, n },
	})
	if err != nil {
		f.Fatal(err)
	}
	h := s.Handler()
	tok, _ := s.Mint(Grant{TaskID: "t", DeviceID: "d", PackageID: "fw"})
	etag := fmt.Sprintf(`"%x"`, sum)

	f.Add("Bearer "+tok, "bytes=100-", "", "")
	f.Add("Bearer "+tok, "bytes=0-0,5-9,-3", etag, "")
	f.Add("Bearer "+tok, "bytes=99999999999999999999-", `W/"x"`, "*")
	f.Add("bearer  "+tok+" ", "bytes=--1", "Mon, 02 Jan 2006 15:04:05 GMT", etag)
	f.Add("Bearer", "", "", "")
	f.Add("Bearer "+tok[:len(tok)-1], "bytes=1-0", "", "")
	f.Fuzz(func(t *testing.T, auth, rng, ifRange, ifNoneMatch string) {
		req := httptest.NewRequest(http.MethodGet, Path("fw"), nil)
		for k, v := range map[string]string{"Authorization": auth, "Range": rng, "If-Range": ifRange, "If-None-Match": ifNoneMatch} {
			if v != "" {
				req.Header[k] = []string{v}
			}
		}
		served.offset, served.n = -1, 0
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		body := w.Body.Bytes()
		switch w.Code {
		case http.StatusOK:
			if !bytes.Equal(body, content) {
				t.Fatalf("200 with %d bytes, want the package's %d", len(body), len(content))
			}
			if served.offset != 0 || served.n != int64(len(content)) {
				t.Fatalf("200: OnServed(%d, %d), want (0, %d)", served.offset, served.n, len(content))
			}
		case http.StatusPartialContent:
			var first, last, total int64
			if _, err := fmt.Sscanf(w.Header().Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &total); err == nil {
				if total != size || !bytes.Equal(body, content[first:last+1]) {
					t.Fatalf("206 %s with %d bytes that are not that range", w.Header().Get("Content-Range"), len(body))
				}
				if served.offset != first || served.n != int64(len(body)) {
					t.Fatalf("206 %s: OnServed(%d, %d)", w.Header().Get("Content-Range"), served.offset, served.n)
				}
			} else if !strings.HasPrefix(w.Header().Get("Content-Type"), "multipart/byteranges") {
				t.Fatalf("206 without Content-Range, of type %q", w.Header().Get("Content-Type"))
			}
		case http.StatusUnauthorized, http.StatusNotModified, http.StatusPreconditionFailed, http.StatusRequestedRangeNotSatisfiable:
			if served.n != 0 {
				t.Fatalf("%d, yet OnServed(%d, %d)", w.Code, served.offset, served.n)
			}
		default:
			t.Fatalf("unexpected status %d: %q", w.Code, body)
		}
	})
}

// FuzzContentDisposition checks that any file name gives a header value of
// printable ASCII from which a standard parser gets the name back (with
// control characters as '_' and invalid UTF-8 as U+FFFD).
func FuzzContentDisposition(f *testing.F) {
	for _, s := range []string{"fw.bin", `a"b\c`, "é", "\xff", "a\r\nb", "", "日本.bin", "%41'*;="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		v := contentDisposition(name)
		for i := 0; i < len(v); i++ {
			if c := v[i]; c < 0x20 || c >= 0x7f {
				t.Fatalf("contentDisposition(%q) = %q holds byte %#x", name, v, c)
			}
		}
		want := strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return '_'
			}
			return r
		}, strings.ToValidUTF8(name, string(utf8.RuneError)))
		disp, params, err := mime.ParseMediaType(v)
		if err != nil || disp != "attachment" || params["filename"] != want {
			t.Fatalf("ParseMediaType(%q) = %q, %q, %v; want attachment, filename %q", v, disp, params, err, want)
		}
	})
}
