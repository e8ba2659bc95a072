package download_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/internal/minrate"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport/download"
)

var t0 = time.Date(2026, 3, 14, 9, 26, 53, 0, time.UTC)

// testKey returns a 32-byte key derived from seed.
func testKey(seed string) []byte {
	k := sha256.Sum256([]byte(seed))
	return k[:]
}

// served is one OnServed call.
type served struct {
	g               download.Grant
	offset, n, size int64
}

// fixture is a Server over a memstore holding one package, "fw".
type fixture struct {
	t       *testing.T
	store   *memstore.Store
	clock   *clocktest.Clock
	srv     *download.Server
	content []byte
	pkg     persistence.Package
	grant   download.Grant
	logs    *syncBuffer

	mu     sync.Mutex
	served []served
	denied map[download.Grant]error // Authorize's answers
	notify chan struct{}            // a signal per OnServed call
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of the
// server's logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		t:      t,
		store:  memstore.New(),
		clock:  clocktest.New(t0),
		logs:   &syncBuffer{},
		denied: map[download.Grant]error{},
		notify: make(chan struct{}, 1),
	}
	ctx := context.Background()
	if err := f.store.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolMQTT}); err != nil {
		t.Fatal(err)
	}
	// 300 KiB: several 32 KiB copy buffers and memstore chunks.
	rng := rand.New(rand.NewPCG(1, 2))
	f.content = make([]byte, 300<<10)
	for i := range f.content {
		f.content[i] = byte(rng.Uint32())
	}
	f.pkg = f.addPackage("fw", "fw-2.0.bin", f.content)
	f.grant = download.Grant{TaskID: "t1", DeviceID: "dev-1", Attempt: 2, PackageID: "fw"}
	f.srv = f.newServer(testKey("k1"))
	return f
}

func (f *fixture) newServer(key []byte) *download.Server {
	f.t.Helper()
	srv, err := download.New(download.Config{
		Packages: f.store,
		Handles:  f.store,
		Key:      key,
		Clock:    f.clock,
		Authorize: func(_ context.Context, g download.Grant) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.denied[g]
		},
		OnServed: func(g download.Grant, offset, n, size int64) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.served = append(f.served, served{g, offset, n, size})
			select {
			case f.notify <- struct{}{}:
			default:
			}
		},
		Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return srv
}

// addPackage stores a package of product "p" with its file.
func (f *fixture) addPackage(id, fileName string, content []byte) persistence.Package {
	f.t.Helper()
	ctx := context.Background()
	size, sum, err := f.store.WriteBlob(ctx, id, bytes.NewReader(content), 1<<30)
	if err != nil {
		f.t.Fatal(err)
	}
	p := persistence.Package{
		ID: id, ProductID: "p", Type: persistence.PackageFirmware, Version: "2.0",
		FileName: fileName, Size: size, SHA256: sum, Created: t0.Add(-time.Hour),
	}
	if err := f.store.PutPackage(ctx, p); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// takeServed waits until at least n OnServed calls have come (the server
// makes the call after the last byte went out, so it may trail the client's
// read), then returns and forgets them all.
func (f *fixture) takeServed(n int) []served {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		f.mu.Lock()
		if len(f.served) >= n {
			s := f.served
			f.served = nil
			f.mu.Unlock()
			return s
		}
		f.mu.Unlock()
		select {
		case <-f.notify:
		case <-ctx.Done():
			f.t.Fatalf("waited for %d OnServed calls", n)
		}
	}
}

// startTLS serves h over HTTPS on loopback with a certificate from
// LoadOrCreateCert for the default hosts, and returns its base URL and a
// client that trusts only that certificate.
func startTLS(t *testing.T, h http.Handler) (string, *http.Client) {
	t.Helper()
	cert, err := download.LoadOrCreateCert(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(h)
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts.URL, trustingClient(t, cert)
}

// trustingClient returns a client whose only root is cert's leaf.
func trustingClient(t *testing.T, cert tls.Certificate) *http.Client {
	t.Helper()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// response is a finished HTTP exchange.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends method url with the token (none when empty) and extra headers
// ("Name: value").
func do(t *testing.T, c *http.Client, method, url, token string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Add(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, body}
}

func TestFullDownloadTLS(t *testing.T) {
	f := newFixture(t)
	base, c := startTLS(t, f.srv.Handler())
	tok, exp := f.srv.Mint(f.grant)
	if want := t0.Add(24 * time.Hour); !exp.Equal(want) {
		t.Errorf("Mint expires %v, want %v (now + 24h)", exp, want)
	}

	r := do(t, c, "GET", base+download.Path("fw"), tok)
	if r.status != http.StatusOK {
		t.Fatalf("GET: status %d, want 200; body %q", r.status, r.body)
	}
	if got, want := sha256.Sum256(r.body), f.pkg.SHA256; got != want {
		t.Errorf("body SHA-256 %x, want %x (%d bytes received)", got, want, len(r.body))
	}
	for k, want := range map[string]string{
		"Content-Length":      fmt.Sprint(len(f.content)),
		"Content-Type":        "application/octet-stream",
		"Accept-Ranges":       "bytes",
		"Etag":                `"` + hex.EncodeToString(f.pkg.SHA256[:]) + `"`,
		"Last-Modified":       f.pkg.Created.Format(http.TimeFormat),
		"Content-Disposition": `attachment; filename=fw-2.0.bin`,
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	want := []served{{f.grant, 0, int64(len(f.content)), int64(len(f.content))}}
	if got := f.takeServed(len(want)); !equalServed(got, want) {
		t.Errorf("OnServed calls %+v, want %+v", got, want)
	}
}

func equalServed(a, b []served) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPlainHTTP(t *testing.T) {
	f := newFixture(t)
	ts := httptest.NewServer(f.srv.Handler())
	t.Cleanup(ts.Close)
	tok, _ := f.srv.Mint(f.grant)
	r := do(t, ts.Client(), "GET", ts.URL+download.Path("fw"), tok, "Range: bytes=1000-")
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, f.content[1000:]) {
		t.Fatalf("GET over HTTP with Range: status %d, %d bytes; want 206 and %d bytes", r.status, len(r.body), len(f.content)-1000)
	}
	r = do(t, ts.Client(), "GET", ts.URL+download.Path("fw"), "")
	if r.status != http.StatusUnauthorized {
		t.Fatalf("GET over HTTP without a token: status %d, want 401", r.status)
	}
}

func TestRanges(t *testing.T) {
	f := newFixture(t)
	base, c := startTLS(t, f.srv.Handler())
	tok, _ := f.srv.Mint(f.grant)
	url := base + download.Path("fw")
	size := int64(len(f.content))
	etag := `"` + hex.EncodeToString(f.pkg.SHA256[:]) + `"`

	for _, tc := range []struct {
		name    string
		headers []string
		status  int
		from    int64 // expected body: content[from:to]
		to      int64
	}{
		{"resume", []string{"Range: bytes=123457-"}, 206, 123457, size},
		{"middle", []string{"Range: bytes=70000-70999"}, 206, 70000, 71000},
		{"last byte", []string{"Range: bytes=-1"}, 206, size - 1, size},
		{"if-range etag matches", []string{"Range: bytes=200000-", "If-Range: " + etag}, 206, 200000, size},
		{"if-range etag differs", []string{"Range: bytes=200000-", `If-Range: "00"`}, 200, 0, size},
		{"if-range date", []string{"Range: bytes=5-", "If-Range: " + f.pkg.Created.Format(http.TimeFormat)}, 206, 5, size},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, c, "GET", url, tok, tc.headers...)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d; body %.100q", r.status, tc.status, r.body)
			}
			if !bytes.Equal(r.body, f.content[tc.from:tc.to]) {
				t.Errorf("body: %d bytes, want content[%d:%d] (%d bytes)", len(r.body), tc.from, tc.to, tc.to-tc.from)
			}
			if tc.status == 206 {
				want := fmt.Sprintf("bytes %d-%d/%d", tc.from, tc.to-1, size)
				if got := r.header.Get("Content-Range"); got != want {
					t.Errorf("Content-Range %q, want %q", got, want)
				}
			}
			if got := r.header.Get("Content-Length"); got != fmt.Sprint(tc.to-tc.from) {
				t.Errorf("Content-Length %s, want %d", got, tc.to-tc.from)
			}
			want := []served{{f.grant, tc.from, tc.to - tc.from, size}}
			if got := f.takeServed(len(want)); !equalServed(got, want) {
				t.Errorf("OnServed calls %+v, want %+v", got, want)
			}
		})
	}

	t.Run("unsatisfiable", func(t *testing.T) {
		r := do(t, c, "GET", url, tok, fmt.Sprintf("Range: bytes=%d-", size))
		if r.status != http.StatusRequestedRangeNotSatisfiable {
			t.Fatalf("status %d, want 416", r.status)
		}
		if got := f.takeServed(0); len(got) != 0 {
			t.Errorf("OnServed after a 416: %+v", got)
		}
	})

	t.Run("if-none-match", func(t *testing.T) {
		r := do(t, c, "GET", url, tok, "If-None-Match: "+etag)
		if r.status != http.StatusNotModified || len(r.body) != 0 {
			t.Fatalf("status %d with %d bytes, want 304 and none", r.status, len(r.body))
		}
		if got := f.takeServed(0); len(got) != 0 {
			t.Errorf("OnServed after a 304: %+v", got)
		}
	})

	t.Run("multiple", func(t *testing.T) {
		r := do(t, c, "GET", url, tok, "Range: bytes=10-19, 1000-1099")
		if r.status != http.StatusPartialContent {
			t.Fatalf("status %d, want 206", r.status)
		}
		mt, params, err := mime.ParseMediaType(r.header.Get("Content-Type"))
		if err != nil || mt != "multipart/byteranges" {
			t.Fatalf("Content-Type %q (%v), want multipart/byteranges", r.header.Get("Content-Type"), err)
		}
		mr := multipart.NewReader(bytes.NewReader(r.body), params["boundary"])
		for _, want := range [][2]int64{{10, 20}, {1000, 1100}} {
			p, err := mr.NextPart()
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, f.content[want[0]:want[1]]) {
				t.Errorf("part %s: %d bytes, want content[%d:%d]", p.Header.Get("Content-Range"), len(got), want[0], want[1])
			}
		}
		if _, err := mr.NextPart(); err != io.EOF {
			t.Errorf("after two parts: %v, want EOF", err)
		}
		// n counts the whole body, part headers included.
		want := []served{{f.grant, 10, int64(len(r.body)), size}}
		if got := f.takeServed(len(want)); !equalServed(got, want) {
			t.Errorf("OnServed calls %+v, want %+v", got, want)
		}
	})
}

func TestHead(t *testing.T) {
	f := newFixture(t)
	base, c := startTLS(t, f.srv.Handler())
	tok, _ := f.srv.Mint(f.grant)
	r := do(t, c, "HEAD", base+download.Path("fw"), tok)
	if r.status != http.StatusOK || len(r.body) != 0 {
		t.Fatalf("HEAD: status %d with %d body bytes, want 200 and none", r.status, len(r.body))
	}
	if got := r.header.Get("Content-Length"); got != fmt.Sprint(len(f.content)) {
		t.Errorf("Content-Length %q, want %d", got, len(f.content))
	}
	if got := r.header.Get("Content-Disposition"); got != `attachment; filename=fw-2.0.bin` {
		t.Errorf("Content-Disposition %q", got)
	}
	if got := f.takeServed(0); len(got) != 0 {
		t.Errorf("OnServed after HEAD: %+v", got)
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	f.addPackage("other", "other.bin", []byte("other firmware"))
	base, c := startTLS(t, f.srv.Handler())
	url := base + download.Path("fw")
	good, _ := f.srv.Mint(f.grant)

	otherKey := f.newServer(testKey("k2"))
	forged, _ := otherKey.Mint(f.grant)
	otherPkg, _ := f.srv.Mint(download.Grant{TaskID: "t1", DeviceID: "dev-1", Attempt: 2, PackageID: "other"})
	unknown, _ := f.srv.Mint(download.Grant{TaskID: "t1", DeviceID: "dev-1", Attempt: 2, PackageID: "nope"})
	noBlob := download.Grant{TaskID: "t1", DeviceID: "dev-1", PackageID: "noblob"}
	if err := f.store.PutPackage(context.Background(), persistence.Package{
		ID: "noblob", ProductID: "p", Type: persistence.PackageFirmware, Version: "2.0", Size: 3,
	}); err != nil {
		t.Fatal(err)
	}
	noBlobTok, _ := f.srv.Mint(noBlob)
	stopped := download.Grant{TaskID: "t1", DeviceID: "dev-1", Attempt: 1, PackageID: "fw"}
	f.mu.Lock()
	f.denied[stopped] = errors.New("sub-task reached SUCCESS")
	f.mu.Unlock()
	stoppedTok, _ := f.srv.Mint(stopped)
	// Tampered: the payload's last character changed, the MAC kept.
	payload, mac, _ := strings.Cut(good, ".")
	last := payload[len(payload)-1:]
	repl := "A"
	if last == "A" {
		repl = "E"
	}
	tampered := payload[:len(payload)-1] + repl + "." + mac

	const invalid = `Bearer error="invalid_token"`
	for _, tc := range []struct {
		name      string
		method    string
		url       string
		headers   []string
		status    int
		challenge string
		body      string
	}{
		{"missing", "GET", url, nil, 401, "Bearer", ""},
		{"basic", "GET", url, []string{"Authorization: Basic dXNlcjpwYXNz"}, 401, "Bearer", ""},
		{"empty bearer", "GET", url, []string{"Authorization: Bearer "}, 401, invalid, ""},
		{"garbage", "GET", url, []string{"Authorization: Bearer not-a-token"}, 401, invalid, ""},
		{"garbage with dot", "GET", url, []string{"Authorization: Bearer a.b"}, 401, invalid, ""},
		{"two tokens", "GET", url, []string{"Authorization: Bearer " + good, "Authorization: Bearer " + good}, 401, invalid, ""},
		{"forged", "GET", url, []string{"Authorization: Bearer " + forged}, 401, invalid, ""},
		{"tampered", "GET", url, []string{"Authorization: Bearer " + tampered}, 401, invalid, ""},
		{"other package", "GET", url, []string{"Authorization: Bearer " + otherPkg}, 403, "", "another package"},
		{"revoked", "GET", url, []string{"Authorization: Bearer " + stoppedTok}, 403, "", "has ended or was stopped"},
		{"unknown package", "GET", base + download.Path("nope"), []string{"Authorization: Bearer " + unknown}, 404, "", ""},
		{"package without file", "GET", base + download.Path("noblob"), []string{"Authorization: Bearer " + noBlobTok}, 404, "", ""},
		{"not a package path", "GET", base + "/packages/fw/x", []string{"Authorization: Bearer " + good}, 404, "", ""},
		{"root", "GET", base + "/", []string{"Authorization: Bearer " + good}, 404, "", ""},
		{"post", "POST", url, []string{"Authorization: Bearer " + good}, 405, "", ""},
		{"delete without token", "DELETE", url, nil, 405, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, c, tc.method, tc.url, "", tc.headers...)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d; body %q", r.status, tc.status, r.body)
			}
			if got := r.header.Get("WWW-Authenticate"); got != tc.challenge {
				t.Errorf("WWW-Authenticate %q, want %q", got, tc.challenge)
			}
			if tc.status == 405 {
				if got := r.header.Get("Allow"); got != "GET, HEAD" {
					t.Errorf("Allow %q, want %q", got, "GET, HEAD")
				}
			}
			if !strings.Contains(string(r.body), tc.body) {
				t.Errorf("body %q does not say %q", r.body, tc.body)
			}
		})
	}
	if got := f.takeServed(0); len(got) != 0 {
		t.Errorf("OnServed after refusals: %+v", got)
	}
	logs := f.logs.String()
	for _, tok := range []string{good, forged, otherPkg, tampered, stoppedTok} {
		_, mac, _ := strings.Cut(tok, ".")
		if strings.Contains(logs, mac) {
			t.Errorf("the logs hold a token:\n%s", logs)
			break
		}
	}
	for _, reason := range []string{"no bearer token", "invalid token", "signature", "another package", "token revoked", "sub-task reached SUCCESS", "unknown package", "method not allowed"} {
		if !strings.Contains(logs, reason) {
			t.Errorf("no log line says %q:\n%s", reason, logs)
		}
	}

	// The same token works once the grant is allowed again: Authorize is
	// asked on every request.
	f.mu.Lock()
	delete(f.denied, stopped)
	f.mu.Unlock()
	if r := do(t, c, "HEAD", url, stoppedTok); r.status != http.StatusOK {
		t.Errorf("allowed again: status %d, want 200", r.status)
	}
}

func TestExpiry(t *testing.T) {
	f := newFixture(t)
	base, c := startTLS(t, f.srv.Handler())
	url := base + download.Path("fw")
	tok, exp := f.srv.Mint(f.grant)

	f.clock.Advance(24*time.Hour - time.Nanosecond)
	if r := do(t, c, "HEAD", url, tok); r.status != http.StatusOK {
		t.Fatalf("1ns before expiry: status %d, want 200", r.status)
	}
	f.clock.Advance(time.Nanosecond)
	if !f.clock.Now().Equal(exp) {
		t.Fatalf("clock at %v, want the expiry %v", f.clock.Now(), exp)
	}
	r := do(t, c, "GET", url, tok)
	if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
		t.Fatalf("at expiry: status %d, WWW-Authenticate %q; want 401 invalid_token", r.status, r.header.Get("WWW-Authenticate"))
	}
	if !strings.Contains(f.logs.String(), "token expired") {
		t.Errorf("no log line says the token expired:\n%s", f.logs.String())
	}
	// A token minted now is valid again.
	fresh, _ := f.srv.Mint(f.grant)
	if r := do(t, c, "HEAD", url, fresh); r.status != http.StatusOK {
		t.Fatalf("fresh token: status %d, want 200", r.status)
	}
}

func TestTTL(t *testing.T) {
	f := newFixture(t)
	srv, err := download.New(download.Config{Packages: f.store, Key: testKey("k1"), TTL: time.Minute, Clock: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	if _, exp := srv.Mint(f.grant); !exp.Equal(t0.Add(time.Minute)) {
		t.Errorf("Mint with TTL 1m expires %v, want %v", exp, t0.Add(time.Minute))
	}
}

func TestRestart(t *testing.T) {
	f := newFixture(t)
	tok, _ := f.srv.Mint(f.grant)
	for _, tc := range []struct {
		name   string
		key    []byte
		status int
	}{
		{"same key", testKey("k1"), http.StatusPartialContent},
		{"another key", testKey("k2"), http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base, c := startTLS(t, f.newServer(tc.key).Handler())
			r := do(t, c, "GET", base+download.Path("fw"), tok, "Range: bytes=42-")
			if r.status != tc.status {
				t.Fatalf("status %d, want %d", r.status, tc.status)
			}
			if tc.status == http.StatusPartialContent && !bytes.Equal(r.body, f.content[42:]) {
				t.Errorf("body: %d bytes, want content[42:]", len(r.body))
			}
		})
	}
}

func TestContentDisposition(t *testing.T) {
	f := newFixture(t)
	base, c := startTLS(t, f.srv.Handler())
	for _, tc := range []struct {
		id, fileName string
		header       string // the exact header
		parsed       string // the file name mime.ParseMediaType finds
	}{
		{"q", `fw "beta" \ 2.bin`, `attachment; filename="fw \"beta\" \\ 2.bin"`, `fw "beta" \ 2.bin`},
		{"u", "прошивка 2.0.bin", `attachment; filename="________ 2.0.bin"; filename*=UTF-8''%D0%BF%D1%80%D0%BE%D1%88%D0%B8%D0%B2%D0%BA%D0%B0%202.0.bin`, "прошивка 2.0.bin"},
		{"e", "", `attachment; filename=e`, "e"},
		{"t", "fw-2.0_rc1.bin", `attachment; filename=fw-2.0_rc1.bin`, "fw-2.0_rc1.bin"},
		{"s", "fw 2.0.bin", `attachment; filename="fw 2.0.bin"`, "fw 2.0.bin"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			f.addPackage(tc.id, tc.fileName, []byte("firmware "+tc.id))
			tok, _ := f.srv.Mint(download.Grant{TaskID: "t", DeviceID: "d", PackageID: tc.id})
			r := do(t, c, "GET", base+download.Path(tc.id), tok)
			if r.status != http.StatusOK {
				t.Fatalf("status %d, want 200", r.status)
			}
			got := r.header.Get("Content-Disposition")
			if got != tc.header {
				t.Errorf("Content-Disposition\n\t%s\nwant\n\t%s", got, tc.header)
			}
			disp, params, err := mime.ParseMediaType(got)
			if err != nil || disp != "attachment" || params["filename"] != tc.parsed {
				t.Errorf("ParseMediaType(%q) = %q, %q, %v; want attachment with filename %q", got, disp, params, err, tc.parsed)
			}
		})
	}
}

func TestPathEscaping(t *testing.T) {
	f := newFixture(t)
	base, c := startTLS(t, f.srv.Handler())
	for _, id := range []string{"fw 2.0;x?y#z%41", "ü-é", "..", ".", "a+b=c&d"} {
		content := []byte("firmware " + id)
		f.addPackage(id, "f.bin", content)
		tok, _ := f.srv.Mint(download.Grant{TaskID: "t", DeviceID: "d", PackageID: id})
		r := do(t, c, "GET", base+download.Path(id), tok)
		if r.status != http.StatusOK || !bytes.Equal(r.body, content) {
			t.Errorf("package %q at %s: status %d, body %q", id, download.Path(id), r.status, r.body)
		}
	}
}

// TestPackageMismatch: a file that differs from the package's metadata, in
// size or in SHA-256, is never served.
func TestPackageMismatch(t *testing.T) {
	for name, tamper := range map[string]func(*persistence.Package){
		"size":    func(p *persistence.Package) { p.Size++ },
		"sha-256": func(p *persistence.Package) { p.SHA256[31] ^= 0x80 },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			p := f.pkg
			tamper(&p)
			if err := f.store.PutPackage(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			base, c := startTLS(t, f.srv.Handler())
			tok, _ := f.srv.Mint(f.grant)
			if r := do(t, c, "GET", base+download.Path("fw"), tok); r.status != http.StatusInternalServerError {
				t.Fatalf("status %d, want 500", r.status)
			}
			if got := f.takeServed(0); len(got) != 0 {
				t.Errorf("OnServed after a refusal: %+v", got)
			}
			if logs := f.logs.String(); !strings.Contains(logs, "does not match its record") {
				t.Errorf("no log line names the mismatch:\n%s", logs)
			}
		})
	}
}

// TestOpenPackage: the verified opener of the HTTP and CoAP paths returns
// the record and its file when they agree, and tells each refusal apart.
func TestOpenPackage(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	blob, pkg, err := download.OpenPackage(ctx, f.store, "fw")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(blob)
	_ = blob.Close()
	if err != nil || !bytes.Equal(got, f.content) || pkg.ID != "fw" || pkg.SHA256 != f.pkg.SHA256 {
		t.Fatalf("OpenPackage(fw): %d bytes (%v), record %+v", len(got), err, pkg)
	}

	if err := f.store.PutPackage(ctx, persistence.Package{ID: "noblob", ProductID: "p", Type: persistence.PackageFirmware, Version: "2.0", Size: 3}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"nope", "noblob"} {
		if _, _, err := download.OpenPackage(ctx, f.store, id); !errors.Is(err, persistence.ErrNotFound) || !strings.Contains(err.Error(), id) {
			t.Errorf("OpenPackage(%s): %v, want persistence.ErrNotFound naming it", id, err)
		}
	}
	for name, tamper := range map[string]func(*persistence.Package){
		"short": func(p *persistence.Package) { p.Size-- },
		"long":  func(p *persistence.Package) { p.Size++ },
		"sum":   func(p *persistence.Package) { p.SHA256[0] ^= 1 },
	} {
		p := f.pkg
		p.ID = "fw-" + name
		f.addPackage(p.ID, "x.bin", f.content)
		tamper(&p)
		if err := f.store.PutPackage(ctx, p); err != nil {
			t.Fatal(err)
		}
		if b, _, err := download.OpenPackage(ctx, f.store, p.ID); !errors.Is(err, download.ErrPackageMismatch) || b != nil {
			t.Errorf("OpenPackage(%s): blob %v, %v, want only download.ErrPackageMismatch", p.ID, b, err)
		}
	}
}

func TestHostnameVerification(t *testing.T) {
	f := newFixture(t)
	tok, _ := f.srv.Mint(f.grant)
	cert, err := download.LoadOrCreateCert(t.TempDir(), []string{"ota.example.com", "10.1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(f.srv.Handler())
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	req, err := http.NewRequest("GET", ts.URL+download.Path("fw"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := trustingClient(t, cert).Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a certificate for ota.example.com and 10.1.2.3 was accepted for 127.0.0.1")
	}
	var herr x509.HostnameError
	if !errors.As(err, &herr) {
		t.Fatalf("error %v, want an x509.HostnameError", err)
	}
}

func TestNewErrors(t *testing.T) {
	st := memstore.New()
	for _, tc := range []struct {
		name string
		cfg  download.Config
	}{
		{"no packages", download.Config{Key: testKey("k")}},
		{"short key", download.Config{Packages: st, Key: make([]byte, 31)}},
		{"negative TTL", download.Config{Packages: st, Key: testKey("k"), TTL: -time.Second}},
	} {
		if _, err := download.New(tc.cfg); err == nil {
			t.Errorf("%s: New succeeded", tc.name)
		}
	}
	if _, err := download.New(download.Config{Packages: st, Key: testKey("k")}); err != nil {
		t.Errorf("New with defaults: %v", err)
	}
}

// TestClientGoesAway: OnServed reports the bytes written before the client
// closed the connection, not the size of the range.
func TestClientGoesAway(t *testing.T) {
	f := newFixture(t)
	// Larger than what the loopback socket buffers can hold, so that the
	// server is still writing when the client leaves.
	big := bytes.Repeat([]byte("firmware"), 1<<20) // 8 MiB
	f.addPackage("big", "big.bin", big)
	done := make(chan served, 1)
	srv, err := download.New(download.Config{
		Packages: f.store, Key: testKey("k1"), Clock: f.clock,
		OnServed: func(g download.Grant, offset, n, size int64) { done <- served{g, offset, n, size} },
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	g := download.Grant{TaskID: "t", DeviceID: "d", PackageID: "big"}
	tok, _ := srv.Mint(g)
	req, err := http.NewRequest("GET", ts.URL+download.Path("big"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Range", "bytes=1000-")
	tr := &http.Transport{}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // before the end: the transport closes the connection
	tr.CloseIdleConnections()

	s := <-done // the go test -timeout catches a handler that never returns
	if s.g != g || s.offset != 1000 || s.size != int64(len(big)) {
		t.Errorf("OnServed(%+v, %d, %d, %d), want the grant, offset 1000, size %d", s.g, s.offset, s.n, s.size, len(big))
	}
	t.Logf("%d of %d bytes written", s.n, len(big)-1000)
	if s.n < 4096 || s.n >= int64(len(big))-1000 {
		t.Errorf("OnServed reports %d bytes written, want at least the 4096 read and less than the %d of the range", s.n, len(big)-1000)
	}
}

// TestCheck: the token check for downloads outside HTTP (CoAP).
func TestCheck(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	tok, _ := f.srv.Mint(f.grant)
	if g, err := f.srv.Check(ctx, tok, "fw"); err != nil || g != f.grant {
		t.Fatalf("Check = %+v, %v", g, err)
	}
	if _, err := f.srv.Check(ctx, tok, "other"); !errors.Is(err, download.ErrForbidden) {
		t.Errorf("another package: %v", err)
	}
	if _, err := f.srv.Check(ctx, "garbage", "fw"); !errors.Is(err, download.ErrInvalidToken) {
		t.Errorf("garbage: %v", err)
	}
	f.mu.Lock()
	f.denied[f.grant] = errors.New("stopped")
	f.mu.Unlock()
	if _, err := f.srv.Check(ctx, tok, "fw"); !errors.Is(err, download.ErrForbidden) {
		t.Errorf("revoked: %v", err)
	}
	f.clock.Advance(25 * time.Hour)
	if g, err := f.srv.Check(ctx, tok, "fw"); !errors.Is(err, download.ErrInvalidToken) || g != f.grant {
		t.Errorf("expired: %+v, %v, want its grant and download.ErrInvalidToken", g, err)
	}
	if g, err := f.srv.Check(ctx, "garbage", "fw"); g != (download.Grant{}) {
		t.Errorf("garbage: %+v, %v, want no grant", g, err)
	}
	f.srv.Served(f.grant, 10, 20, 300)
	if got := f.takeServed(1); len(got) != 1 || got[0].offset != 10 || got[0].n != 20 {
		t.Errorf("Served: %+v", got)
	}
}

// TestHandle (issue 20, item 2): a handle is short (it fits a Package URI
// of 255 characters whatever the device ID), the same for every call with
// one grant, also on a restarted server with the same key and store, never
// expires, and passes the one token check (Check), over HTTP too, as a
// token does: revoked when Authorize refuses its grant, refused for another
// package, unknown or tampered with.
func TestHandle(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	long := download.Grant{TaskID: "0193e7a4c5d6e7f801234567", DeviceID: strings.Repeat("d", persistence.MaxIDLen), Attempt: 3, PackageID: "fw"}
	h, err := f.srv.Handle(ctx, long)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 22 || strings.ContainsAny(h, "/?.=+") {
		t.Fatalf("handle %q: want 22 characters of base64url", h)
	}
	if again, err := f.srv.Handle(ctx, long); err != nil || again != h {
		t.Fatalf("the same grant's handle again: %q, %v; first %q", again, err, h)
	}
	if other, _ := f.srv.Handle(ctx, download.Grant{TaskID: long.TaskID, DeviceID: long.DeviceID, Attempt: 4, PackageID: "fw"}); other == h {
		t.Fatal("the next attempt has the same handle")
	}
	f.clock.Advance(10 * 24 * time.Hour) // handles do not expire
	restarted := f.newServer(testKey("k1"))
	if again, err := restarted.Handle(ctx, long); err != nil || again != h {
		t.Fatalf("after a restart: %q, %v; before %q", again, err, h)
	}
	for name, srv := range map[string]*download.Server{"first": f.srv, "restarted": restarted} {
		if g, err := srv.Check(ctx, h, "fw"); err != nil || g != long {
			t.Errorf("%s: Check(handle) = %+v, %v; want %+v", name, g, err, long)
		}
	}
	if _, err := f.srv.Check(ctx, h, "other"); !errors.Is(err, download.ErrForbidden) {
		t.Errorf("a handle for another package: %v, want ErrForbidden", err)
	}
	if _, err := f.newServer(testKey("k2")).Check(ctx, h, "fw"); !errors.Is(err, download.ErrInvalidToken) {
		t.Errorf("a handle checked under another key: %v, want ErrInvalidToken", err)
	}
	if _, err := f.srv.Check(ctx, "AAAAAAAAAAAAAAAAAAAAAA", "fw"); !errors.Is(err, download.ErrInvalidToken) {
		t.Errorf("an unknown handle: %v, want ErrInvalidToken", err)
	}
	// Over HTTP, as a bearer token.
	ts := httptest.NewServer(f.srv.Handler())
	t.Cleanup(ts.Close)
	if r := do(t, ts.Client(), "GET", ts.URL+download.Path("fw"), h); r.status != http.StatusOK || !bytes.Equal(r.body, f.content) {
		t.Errorf("GET with a handle: status %d, %d bytes", r.status, len(r.body))
	}
	f.mu.Lock()
	f.denied[long] = errors.New("stopped")
	f.mu.Unlock()
	if _, err := f.srv.Check(ctx, h, "fw"); !errors.Is(err, download.ErrForbidden) {
		t.Errorf("a revoked handle: %v, want ErrForbidden", err)
	}
	noStore, err := download.New(download.Config{Packages: f.store, Key: testKey("k1")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := noStore.Handle(ctx, long); err == nil {
		t.Error("Handle without Config.Handles succeeded")
	}
}

// TestSlowDownloadIsCut: served as serve serves it (under internal/minrate),
// a download the client stops reading is cut, over HTTPS, and OnServed
// reports only the bytes that went out.
func TestSlowDownloadIsCut(t *testing.T) {
	f := newFixture(t)
	// Far more than the socket buffers hold.
	big := f.addPackage("big", "big.bin", make([]byte, 64<<20))
	g := download.Grant{TaskID: "t1", DeviceID: "dev-1", Attempt: 1, PackageID: "big"}
	h := minrate.Handler(minrate.Config{Rate: 256 << 10, Window: 250 * time.Millisecond}, f.srv.Handler())
	url, client := startTLS(t, h)
	tok, _ := f.srv.Mint(g)
	req, _ := http.NewRequest(http.MethodGet, url+download.Path("big"), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	// The client reads nothing more; the server gives up.
	s := f.takeServed(1)
	if s[0].g != g || s[0].n <= 0 || s[0].n >= big.Size {
		t.Fatalf("served %+v of %d bytes, want a cut download", s[0], big.Size)
	}
	if n, err := io.Copy(io.Discard, res.Body); err == nil || n >= big.Size {
		t.Errorf("the client read %d bytes of a cut download (%v)", n, err)
	}
}
