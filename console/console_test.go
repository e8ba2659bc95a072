package console

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string, hdr ...string) *http.Response {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Result()
}

// TestHandlerServesTheBundle: index.html names the hashed script and
// stylesheet, which are served with their content types, cached for good,
// gzipped on request; index.html is revalidated (ETag, 304).
func TestHandlerServesTheBundle(t *testing.T) {
	h := Handler("/ui/")
	res := get(t, h, "GET", "/ui/")
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/html; charset=utf-8" || res.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("GET /ui/: %d %v", res.StatusCode, res.Header)
	}
	if !strings.Contains(res.Header.Get("Content-Security-Policy"), "default-src 'self'") || res.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("GET /ui/: security headers %v", res.Header)
	}
	assets := regexp.MustCompile(`(?:src|href)="(assets/[^"]+)"`).FindAllStringSubmatch(string(body), -1)
	if len(assets) != 2 {
		t.Fatalf("index.html names %d assets, want a script and a stylesheet:\n%s", len(assets), body)
	}
	want := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
	for _, a := range assets {
		path := "/ui/" + a[1]
		plain := get(t, h, "GET", path)
		raw, _ := io.ReadAll(plain.Body)
		ext := path[strings.LastIndex(path, "."):]
		if plain.StatusCode != 200 || plain.Header.Get("Content-Type") != want[ext] || plain.Header.Get("Content-Encoding") != "" ||
			!strings.Contains(plain.Header.Get("Cache-Control"), "immutable") || len(raw) == 0 {
			t.Fatalf("GET %s: %d %v (%d bytes)", path, plain.StatusCode, plain.Header, len(raw))
		}
		zres := get(t, h, "GET", path, "Accept-Encoding", "br, gzip;q=0.8")
		if zres.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("GET %s with gzip accepted: %v", path, zres.Header)
		}
		zr, err := gzip.NewReader(zres.Body)
		if err != nil {
			t.Fatal(err)
		}
		unz, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(unz, raw) {
			t.Fatalf("GET %s: the gzipped body differs from the plain one (%v)", path, err)
		}
		if get(t, h, "GET", path, "Accept-Encoding", "gzip;q=0").Header.Get("Content-Encoding") != "" {
			t.Fatalf("GET %s: gzip sent though refused with q=0", path)
		}
	}
	etag := res.Header.Get("ETag")
	if nm := get(t, h, "GET", "/ui/", "If-None-Match", etag); etag == "" || nm.StatusCode != http.StatusNotModified {
		t.Fatalf("revalidating /ui/ with ETag %q: %d", etag, nm.StatusCode)
	}
	if head := get(t, h, "HEAD", "/ui/"); head.StatusCode != 200 || head.Header.Get("Content-Length") != res.Header.Get("Content-Length") {
		t.Fatalf("HEAD /ui/: %d %v", head.StatusCode, head.Header)
	}
}

func TestHandlerRefusals(t *testing.T) {
	h := Handler("/ui/")
	if res := get(t, h, "GET", "/ui"); res.StatusCode != http.StatusMovedPermanently || res.Header.Get("Location") != "/ui/" {
		t.Fatalf("GET /ui: %d %v", res.StatusCode, res.Header)
	}
	for _, p := range []string{"/ui/nothing.js", "/ui/assets/", "/ui/index.html", "/ui/../go.mod"} {
		if res := get(t, h, "GET", p); res.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s: %d, want 404", p, res.StatusCode)
		}
	}
	if res := get(t, h, "POST", "/ui/"); res.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /ui/: %d, want 405", res.StatusCode)
	}
}

func TestAcceptsGzip(t *testing.T) {
	for in, want := range map[string]bool{
		"": false, "gzip": true, "deflate, gzip": true, "GZIP": true, "gzip;q=0": false, "gzip; q=0.5": true, "x-gzip": false, "br": false, "gzip;q=nope": false,
	} {
		if got := acceptsGzip(in); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", in, got, want)
		}
	}
}
