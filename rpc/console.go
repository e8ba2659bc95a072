package rpc

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/internal/clock"
)

// Console session cookies and header.
const (
	// SessionCookie holds the console session's ID (HttpOnly).
	SessionCookie = "otafleet_session"
	// CSRFCookie holds the session's CSRF token, readable by the page
	// (not HttpOnly), which sends it back in CSRFHeader.
	CSRFCookie = "otafleet_csrf"
	// CSRFHeader must carry the session's CSRF token on every API call
	// authenticated by the session cookie.
	CSRFHeader = "X-CSRF-Token"
)

// Console login paths, mounted by ConsoleAuth.Mount.
const (
	// LoginPath: POST the API token (form field or JSON "token") for a
	// session; GET with ?once=CODE uses a one-time login code.
	LoginPath = "/ui/login"
	// LogoutPath: POST (with the session cookie and CSRF header) ends the
	// session.
	LogoutPath = "/ui/logout"
	// SessionPath: GET (with the session cookie) answers the session's CSRF
	// token and expiry, so that a reloaded page can find them.
	SessionPath = "/ui/session"
)

// ConsoleConfig is the console sessions' policy; zero fields take the
// defaults.
type ConsoleConfig struct {
	// SessionTTL is how long a session lasts from its login. Default 12 h.
	SessionTTL time.Duration
	// OnceTTL is how long a one-time login code stays usable. Default 15 min.
	OnceTTL time.Duration
	// MaxSessions bounds the sessions kept; a login beyond it evicts the
	// oldest. Default 1000.
	MaxSessions int
	// MaxOnce bounds the unused one-time codes; a new one beyond it evicts
	// the oldest. Default 16.
	MaxOnce int
}

func (c ConsoleConfig) withDefaults() ConsoleConfig {
	if c.SessionTTL <= 0 {
		c.SessionTTL = 12 * time.Hour
	}
	if c.OnceTTL <= 0 {
		c.OnceTTL = 15 * time.Minute
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 1000
	}
	if c.MaxOnce <= 0 {
		c.MaxOnce = 16
	}
	return c
}

var (
	errSessionUnknown = errors.New("the console session has expired or is unknown: log in again")
	errNoCSRF         = errors.New("missing " + CSRFHeader + " header: a call with the console's session cookie must carry the CSRF token issued at login")
	errWrongCSRF      = errors.New("the " + CSRFHeader + " header does not match the console session's CSRF token")
	errLoginToken     = errors.New("invalid API token")
	errOnceUnknown    = errors.New("this login link was used already, has expired or is unknown: open the console and log in with the API token")
)

// session is one console session; kept by ID, an unguessable 256-bit value.
type session struct {
	csrf    string
	expires time.Time
}

// ConsoleAuth keeps the web console's sessions in memory and checks API
// calls: a call carries either the bearer token (as RequireToken checks it)
// or the session cookie together with the session's CSRF token in the
// X-CSRF-Token header. Sessions and one-time login codes are random 256-bit
// values, expire, and are bounded in number; they do not survive a restart.
// It is safe for concurrent use.
type ConsoleAuth struct {
	token [sha256.Size]byte
	cfg   ConsoleConfig
	clock clock.Clock
	log   *slog.Logger

	mu       sync.Mutex
	sessions map[string]session   // by session ID
	once     map[string]time.Time // one-time codes and their expiry
}

// NewConsoleAuth returns the console's session keeper for the API token;
// clk nil means clock.Real(), log nil discards.
func NewConsoleAuth(token string, cfg ConsoleConfig, clk clock.Clock, log *slog.Logger) (*ConsoleAuth, error) {
	if token == "" {
		return nil, errors.New("rpc: console: the API token is empty")
	}
	if clk == nil {
		clk = clock.Real()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ConsoleAuth{
		token: sha256.Sum256([]byte(token)), cfg: cfg.withDefaults(), clock: clk, log: log,
		sessions: map[string]session{}, once: map[string]time.Time{},
	}, nil
}

// randomToken is 256 random bits, base64url without padding (43 characters).
func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// NewOnce returns a fresh one-time login code (for LoginPath?once=CODE),
// usable once within ConsoleConfig.OnceTTL.
func (a *ConsoleAuth) NewOnce() string {
	code := randomToken()
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for c, exp := range a.once {
		if !now.Before(exp) {
			delete(a.once, c)
		}
	}
	for len(a.once) >= a.cfg.MaxOnce {
		a.deleteOldestOnceLocked()
	}
	a.once[code] = now.Add(a.cfg.OnceTTL)
	return code
}

func (a *ConsoleAuth) deleteOldestOnceLocked() {
	var oldest string
	var at time.Time
	for c, exp := range a.once {
		if oldest == "" || exp.Before(at) {
			oldest, at = c, exp
		}
	}
	delete(a.once, oldest)
}

// useOnce consumes code; false when it is unknown, used or expired.
func (a *ConsoleAuth) useOnce(code string) bool {
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	exp, ok := a.once[code]
	if !ok {
		return false
	}
	delete(a.once, code)
	return now.Before(exp)
}

// newSession starts a session and returns its ID and value.
func (a *ConsoleAuth) newSession() (string, session) {
	id := randomToken()
	now := a.clock.Now()
	s := session{csrf: randomToken(), expires: now.Add(a.cfg.SessionTTL)}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.sessions) >= a.cfg.MaxSessions {
		for sid, old := range a.sessions {
			if !now.Before(old.expires) {
				delete(a.sessions, sid)
			}
		}
	}
	for len(a.sessions) >= a.cfg.MaxSessions {
		// The oldest session expires first: all last SessionTTL.
		var oldest string
		var at time.Time
		for sid, old := range a.sessions {
			if oldest == "" || old.expires.Before(at) {
				oldest, at = sid, old.expires
			}
		}
		delete(a.sessions, oldest)
	}
	a.sessions[id] = s
	return id, s
}

// session returns r's live session and its ID; an expired one is deleted.
func (a *ConsoleAuth) session(r *http.Request) (string, session, error) {
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" {
		return "", session{}, errSessionUnknown
	}
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[c.Value]
	if !ok {
		return "", session{}, errSessionUnknown
	}
	if !now.Before(s.expires) {
		delete(a.sessions, c.Value)
		return "", session{}, errSessionUnknown
	}
	return c.Value, s, nil
}

// checkSession authenticates a call by its session cookie and CSRF header.
// The error's code is unauthenticated for a missing, unknown or expired
// session, permission_denied for a missing or wrong CSRF token.
func (a *ConsoleAuth) checkSession(r *http.Request) (string, error) {
	id, s, err := a.session(r)
	if err != nil {
		return "", connect.NewError(connect.CodeUnauthenticated, err)
	}
	got := r.Header.Get(CSRFHeader)
	if got == "" {
		return "", connect.NewError(connect.CodePermissionDenied, errNoCSRF)
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) != 1 {
		return "", connect.NewError(connect.CodePermissionDenied, errWrongCSRF)
	}
	return id, nil
}

// hasSessionCookie reports whether r presents a console session.
func hasSessionCookie(r *http.Request) bool {
	c, err := r.Cookie(SessionCookie)
	return err == nil && c.Value != ""
}

// Require returns next behind the API's authentication: a request with an
// Authorization header is checked exactly as RequireToken does; one without
// it but with the session cookie needs a live session and its CSRF token in
// X-CSRF-Token; any other is refused as RequireToken refuses it. An RPC is
// refused with its protocol's code (unauthenticated, or permission_denied
// for a CSRF failure), any other request with 401 or 403.
func (a *ConsoleAuth) Require(next http.Handler) http.Handler {
	errw := connect.NewErrorWriter()
	byToken := &tokenCheck{want: a.token, next: next, errw: errw}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" || !hasSessionCookie(r) {
			byToken.ServeHTTP(w, r)
			return
		}
		if _, err := a.checkSession(r); err != nil {
			writeAuthError(w, r, errw, err.(*connect.Error))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// writeAuthError refuses r with ce in r's RPC protocol, or as plain HTTP
// (401 or 403) for anything else.
func writeAuthError(w http.ResponseWriter, r *http.Request, errw *connect.ErrorWriter, ce *connect.Error) {
	if errw.IsSupported(r) {
		_ = errw.Write(w, r, ce)
		return
	}
	status := http.StatusUnauthorized
	if ce.Code() == connect.CodePermissionDenied {
		status = http.StatusForbidden
	}
	http.Error(w, ce.Message(), status)
}

// Mount registers the login, logout and session handlers on mux at
// LoginPath, LogoutPath and SessionPath. The console's pages (under /ui/)
// are the caller's.
func (a *ConsoleAuth) Mount(mux *http.ServeMux) {
	mux.Handle(LoginPath, http.HandlerFunc(a.serveLogin))
	mux.Handle(LogoutPath, http.HandlerFunc(a.serveLogout))
	mux.Handle(SessionPath, http.HandlerFunc(a.serveSession))
}

// maxLoginBody bounds a login request's body.
const maxLoginBody = 4 << 10

// sessionAnswer is the JSON answer of a login and of SessionPath.
type sessionAnswer struct {
	CSRFToken string    `json:"csrfToken"`
	Expires   time.Time `json:"expires"`
}

// serveLogin: POST with the API token starts a session (JSON answer);
// GET with ?once=CODE starts one from a one-time code and redirects to the
// console, so that the code leaves the address bar.
func (a *ConsoleAuth) serveLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		code := r.URL.Query().Get("once")
		if code == "" {
			http.Redirect(w, r, "/ui/", http.StatusSeeOther)
			return
		}
		if !a.useOnce(code) {
			a.log.Info("console: refused a one-time login code", "remote", r.RemoteAddr)
			http.Error(w, errOnceUnknown.Error(), http.StatusUnauthorized)
			return
		}
		a.startSession(w, r)
		a.log.Info("console: logged in with a one-time code", "remote", r.RemoteAddr)
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
	case http.MethodPost:
		tok, err := loginToken(w, r)
		if err != nil {
			jsonError(w, http.StatusBadRequest, err)
			return
		}
		got := sha256.Sum256([]byte(tok))
		if tok == "" || subtle.ConstantTimeCompare(got[:], a.token[:]) != 1 {
			a.log.Info("console: refused a login", "remote", r.RemoteAddr)
			jsonError(w, http.StatusUnauthorized, errLoginToken)
			return
		}
		s := a.startSession(w, r)
		writeJSON(w, http.StatusOK, sessionAnswer{CSRFToken: s.csrf, Expires: s.expires.UTC()})
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "use POST with the API token, or GET with ?once=CODE", http.StatusMethodNotAllowed)
	}
}

// loginToken reads the token of a login: a form field "token"
// (application/x-www-form-urlencoded or multipart) or JSON {"token": "…"}.
func loginToken(w http.ResponseWriter, r *http.Request) (string, error) {
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginBody)
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		var body struct {
			Token string `json:"token"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			return "", fmt.Errorf("the body is not a JSON object {\"token\": \"…\"} of at most %d bytes", maxLoginBody)
		}
		return body.Token, nil
	case "application/x-www-form-urlencoded", "multipart/form-data":
		if err := r.ParseMultipartForm(maxLoginBody); err != nil && !errors.Is(err, http.ErrNotMultipart) {
			return "", fmt.Errorf("the form is unreadable or larger than %d bytes", maxLoginBody)
		}
		return r.PostFormValue("token"), nil
	}
	return "", errors.New("send the API token as a form field \"token\" or as JSON {\"token\": \"…\"}")
}

// startSession starts a session and sets its cookies on w.
func (a *ConsoleAuth) startSession(w http.ResponseWriter, r *http.Request) session {
	id, s := a.newSession()
	secure := r.TLS != nil
	maxAge := int(a.cfg.SessionTTL / time.Second)
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: id, Path: "/", Expires: s.expires, MaxAge: maxAge,
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
	http.SetCookie(w, &http.Cookie{Name: CSRFCookie, Value: s.csrf, Path: "/", Expires: s.expires, MaxAge: maxAge,
		Secure: secure, SameSite: http.SameSiteStrictMode})
	return s
}

// serveLogout ends the session of a request carrying its cookie and CSRF
// header, and clears the cookies.
func (a *ConsoleAuth) serveLogout(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	id, err := a.checkSession(r)
	if err != nil {
		writeAuthError(w, r, connect.NewErrorWriter(), err.(*connect.Error))
		return
	}
	a.mu.Lock()
	delete(a.sessions, id)
	a.mu.Unlock()
	secure := r.TLS != nil
	for _, name := range []string{SessionCookie, CSRFCookie} {
		http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1,
			HttpOnly: name == SessionCookie, Secure: secure, SameSite: http.SameSiteStrictMode})
	}
	w.WriteHeader(http.StatusNoContent)
}

// serveSession answers a live session's CSRF token and expiry (GET with the
// session cookie); 401 otherwise.
func (a *ConsoleAuth) serveSession(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "use GET", http.StatusMethodNotAllowed)
		return
	}
	_, s, err := a.session(r)
	if err != nil {
		jsonError(w, http.StatusUnauthorized, err)
		return
	}
	writeJSON(w, http.StatusOK, sessionAnswer{CSRFToken: s.csrf, Expires: s.expires.UTC()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func jsonError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": strings.TrimSpace(err.Error())})
}
