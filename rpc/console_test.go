package rpc_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/rpc"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// consoleEnv is the API with console sessions on a real loopback server,
// with a fake clock.
type consoleEnv struct {
	url     string
	clock   *clocktest.Clock
	console *rpc.ConsoleAuth
	// noRedirect is a plain HTTP/1.1 client that does not follow redirects.
	noRedirect *http.Client
}

func newConsoleEnv(t *testing.T, cfg rpc.ConsoleConfig) *consoleEnv {
	t.Helper()
	clk := clocktest.New(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC))
	console, err := rpc.NewConsoleAuth(testToken, cfg, clk, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := memstore.New()
	api, err := rpc.NewHandler(rpc.Deps{Registry: st, Token: testToken, Console: console, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	console.Mount(mux)
	mux.Handle("/", api)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &consoleEnv{url: srv.URL, clock: clk, console: console, noRedirect: &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// login posts the token as JSON and returns the answer's cookies by name
// and CSRF token.
func (e *consoleEnv) login(t *testing.T, token string) (*http.Response, map[string]*http.Cookie, string) {
	t.Helper()
	res, err := http.Post(e.url+rpc.LoginPath, "application/json", strings.NewReader(`{"token":"`+token+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		CSRFToken string `json:"csrfToken"`
		Error     string `json:"error"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatalf("login answer is not JSON: %v", err)
	}
	cookies := map[string]*http.Cookie{}
	for _, c := range res.Cookies() {
		cookies[c.Name] = c
	}
	return res, cookies, body.CSRFToken
}

// sessionClient sends the session cookie and, unless empty, csrf.
type sessionClient struct {
	session, csrf string
	next          http.RoundTripper
}

func (s sessionClient) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.AddCookie(&http.Cookie{Name: rpc.SessionCookie, Value: s.session})
	if s.csrf != "" {
		r.Header.Set(rpc.CSRFHeader, s.csrf)
	}
	return s.next.RoundTrip(r)
}

func (e *consoleEnv) products(session, csrf string) otafleetv1connect.ProductServiceClient {
	c := &http.Client{Transport: sessionClient{session: session, csrf: csrf, next: http.DefaultTransport}}
	return otafleetv1connect.NewProductServiceClient(c, e.url)
}

func wantMessage(t *testing.T, err error, code connect.Code, part string) {
	t.Helper()
	wantCode(t, err, code)
	if !strings.Contains(err.Error(), part) {
		t.Fatalf("error %q does not say %q", err, part)
	}
}

func TestConsoleLogin(t *testing.T) {
	e := newConsoleEnv(t, rpc.ConsoleConfig{})
	ctx := context.Background()

	res, cookies, _ := e.login(t, "wrong-token-0123456789")
	if res.StatusCode != http.StatusUnauthorized || len(cookies) != 0 {
		t.Fatalf("login with a wrong token: %d, cookies %v", res.StatusCode, cookies)
	}

	res, cookies, csrf := e.login(t, testToken)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("login: %d", res.StatusCode)
	}
	sc, cc := cookies[rpc.SessionCookie], cookies[rpc.CSRFCookie]
	if sc == nil || cc == nil {
		t.Fatalf("login set cookies %v, want %s and %s", cookies, rpc.SessionCookie, rpc.CSRFCookie)
	}
	if !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.Path != "/" || sc.MaxAge != 12*3600 || sc.Secure || len(sc.Value) != 43 {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, Max-Age 12 h, not Secure over HTTP, a 256-bit value", sc)
	}
	if want := e.clock.Now().Add(12 * time.Hour); !sc.Expires.Equal(want) {
		t.Errorf("session cookie expires %v, want %v", sc.Expires, want)
	}
	if cc.HttpOnly || cc.Value != csrf || csrf == "" || cc.SameSite != http.SameSiteStrictMode {
		t.Errorf("CSRF cookie %+v, want readable by the page, SameSite=Strict, value %q", cc, csrf)
	}

	// The session works with its CSRF header.
	if _, err := e.products(sc.Value, csrf).ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{})); err != nil {
		t.Fatalf("ListProducts with the session: %v", err)
	}
	// Not without it, nor with another.
	_, err := e.products(sc.Value, "").ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
	wantMessage(t, err, connect.CodePermissionDenied, "missing X-CSRF-Token header")
	_, err = e.products(sc.Value, csrf+"x").ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
	wantMessage(t, err, connect.CodePermissionDenied, "does not match")
	// Nor an unknown session.
	_, err = e.products("forged", csrf).ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
	wantMessage(t, err, connect.CodeUnauthenticated, "log in again")

	// A plain HTTP request (Connect JSON from curl or a page) with the
	// cookie and no CSRF header: 403 with the reason.
	req, _ := http.NewRequest(http.MethodPost, e.url+"/otafleet.v1.ProductService/ListProducts", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	req.AddCookie(&http.Cookie{Name: rpc.SessionCookie, Value: sc.Value})
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "X-CSRF-Token") {
		t.Errorf("JSON call without CSRF header: %d %s, want 403 naming the header", res.StatusCode, b)
	}

	// The session endpoint tells a reloaded page its CSRF token.
	req, _ = http.NewRequest(http.MethodGet, e.url+rpc.SessionPath, nil)
	req.AddCookie(&http.Cookie{Name: rpc.SessionCookie, Value: sc.Value})
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sess struct {
		CSRFToken string `json:"csrfToken"`
	}
	_ = json.NewDecoder(res.Body).Decode(&sess)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || sess.CSRFToken != csrf {
		t.Errorf("session endpoint: %d %q, want 200 %q", res.StatusCode, sess.CSRFToken, csrf)
	}

	// The bearer token works as before; a call without either is refused
	// as before.
	bc := otafleetv1connect.NewProductServiceClient(&http.Client{Transport: bearer{token: testToken, next: http.DefaultTransport}}, e.url)
	if _, err := bc.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{})); err != nil {
		t.Fatalf("bearer token: %v", err)
	}
	nc := otafleetv1connect.NewProductServiceClient(http.DefaultClient, e.url)
	_, err = nc.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
	wantMessage(t, err, connect.CodeUnauthenticated, "missing bearer token")
	// A wrong bearer token is refused even with a valid session: the
	// Authorization header decides.
	wc := &http.Client{Transport: bearer{token: "wrong", next: sessionClient{session: sc.Value, csrf: csrf, next: http.DefaultTransport}}}
	_, err = otafleetv1connect.NewProductServiceClient(wc, e.url).ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
	wantMessage(t, err, connect.CodeUnauthenticated, "invalid bearer token")
}

func TestConsoleLoginForm(t *testing.T) {
	e := newConsoleEnv(t, rpc.ConsoleConfig{})
	res, err := http.PostForm(e.url+rpc.LoginPath, url.Values{"token": {testToken}})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		CSRFToken string `json:"csrfToken"`
	}
	_ = json.NewDecoder(res.Body).Decode(&body)
	if res.StatusCode != http.StatusOK || body.CSRFToken == "" || len(res.Cookies()) != 2 {
		t.Fatalf("form login: %d csrf %q cookies %v", res.StatusCode, body.CSRFToken, res.Cookies())
	}
	// Neither a form nor JSON: a clear 400.
	res2, err := http.Post(e.url+rpc.LoginPath, "text/plain", strings.NewReader(testToken))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res2.Body)
	res2.Body.Close()
	if res2.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "form field") {
		t.Errorf("text login: %d %s", res2.StatusCode, b)
	}
}

// TestConsoleSecureCookie: over TLS the cookies are Secure.
func TestConsoleSecureCookie(t *testing.T) {
	console, err := rpc.NewConsoleAuth(testToken, rpc.ConsoleConfig{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	console.Mount(mux)
	req := httptest.NewRequest(http.MethodPost, rpc.LoginPath, strings.NewReader(`{"token":"`+testToken+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.TLS = &tls.ConnectionState{}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	cs := rec.Result().Cookies()
	if rec.Code != http.StatusOK || len(cs) != 2 {
		t.Fatalf("login over TLS: %d, cookies %v", rec.Code, cs)
	}
	for _, c := range cs {
		if !c.Secure {
			t.Errorf("cookie %s is not Secure over TLS", c.Name)
		}
	}
}

func TestConsoleOnce(t *testing.T) {
	e := newConsoleEnv(t, rpc.ConsoleConfig{})
	code := e.console.NewOnce()
	get := func(code string) *http.Response {
		t.Helper()
		res, err := e.noRedirect.Get(e.url + rpc.LoginPath + "?once=" + url.QueryEscape(code))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	res := get(code)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/ui/" {
		t.Fatalf("once URL: %d to %q, want 303 to /ui/", res.StatusCode, res.Header.Get("Location"))
	}
	var session string
	for _, c := range res.Cookies() {
		if c.Name == rpc.SessionCookie {
			session = c.Value
			if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
				t.Errorf("session cookie %+v", c)
			}
		}
	}
	if session == "" {
		t.Fatal("the once URL set no session cookie")
	}
	if res := get(code); res.StatusCode != http.StatusUnauthorized || len(res.Cookies()) != 0 {
		t.Errorf("second use of the once URL: %d, cookies %v; want 401, none", res.StatusCode, res.Cookies())
	}
	// A code expires after 15 minutes.
	late := e.console.NewOnce()
	e.clock.Advance(15 * time.Minute)
	if res := get(late); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("expired once URL: %d, want 401", res.StatusCode)
	}
	if res := get("made-up"); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("unknown once code: %d, want 401", res.StatusCode)
	}
}

func TestConsoleSessionExpires(t *testing.T) {
	e := newConsoleEnv(t, rpc.ConsoleConfig{})
	ctx := context.Background()
	_, cookies, csrf := e.login(t, testToken)
	c := e.products(cookies[rpc.SessionCookie].Value, csrf)
	e.clock.Advance(12*time.Hour - time.Second)
	if _, err := c.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{})); err != nil {
		t.Fatalf("a second before expiry: %v", err)
	}
	e.clock.Advance(time.Second)
	_, err := c.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
	wantMessage(t, err, connect.CodeUnauthenticated, "expired")
}

func TestConsoleLogout(t *testing.T) {
	e := newConsoleEnv(t, rpc.ConsoleConfig{})
	ctx := context.Background()
	_, cookies, csrf := e.login(t, testToken)
	session := cookies[rpc.SessionCookie].Value
	logout := func(csrf string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, e.url+rpc.LogoutPath, nil)
		req.AddCookie(&http.Cookie{Name: rpc.SessionCookie, Value: session})
		if csrf != "" {
			req.Header.Set(rpc.CSRFHeader, csrf)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	if res := logout(""); res.StatusCode != http.StatusForbidden {
		t.Fatalf("logout without CSRF header: %d, want 403", res.StatusCode)
	}
	res := logout(csrf)
	if res.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %d, want 204", res.StatusCode)
	}
	for _, c := range res.Cookies() {
		if c.MaxAge >= 0 {
			t.Errorf("logout left cookie %s (Max-Age %d)", c.Name, c.MaxAge)
		}
	}
	_, err := e.products(session, csrf).ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
	wantCode(t, err, connect.CodeUnauthenticated)
}

// TestConsoleSessionsBounded: beyond MaxSessions the oldest session goes.
func TestConsoleSessionsBounded(t *testing.T) {
	e := newConsoleEnv(t, rpc.ConsoleConfig{MaxSessions: 2})
	ctx := context.Background()
	var clients []otafleetv1connect.ProductServiceClient
	for range 3 {
		_, cookies, csrf := e.login(t, testToken)
		clients = append(clients, e.products(cookies[rpc.SessionCookie].Value, csrf))
		e.clock.Advance(time.Minute)
	}
	_, err := clients[0].ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
	wantCode(t, err, connect.CodeUnauthenticated)
	for i, c := range clients[1:] {
		if _, err := c.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{})); err != nil {
			t.Errorf("session %d: %v", i+1, err)
		}
	}
}
