package rpc

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"
)

var (
	errNoToken    = errors.New("missing bearer token: send the header \"Authorization: Bearer <token>\"")
	errWrongToken = errors.New("invalid bearer token")
)

// RequireToken returns next behind the API's bearer-token check: a request
// without "Authorization: Bearer <token>" is refused before next runs, so
// before anything reads its body. An RPC (Connect, gRPC, gRPC-Web) is
// refused with the code unauthenticated in its own protocol, any other
// request with 401 and a WWW-Authenticate header. What needs no token
// (health, metrics) is routed around it by the caller.
func RequireToken(token string, next http.Handler) http.Handler {
	return &tokenCheck{want: sha256.Sum256([]byte(token)), next: next, errw: connect.NewErrorWriter()}
}

// tokenCheck is RequireToken's handler; want is the token's SHA-256.
type tokenCheck struct {
	want [sha256.Size]byte
	next http.Handler
	errw *connect.ErrorWriter
}

func (c *tokenCheck) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	err := checkToken(c.want, r.Header)
	if err == nil {
		c.next.ServeHTTP(w, r)
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="otafleet"`)
	if c.errw.IsSupported(r) {
		_ = c.errw.Write(w, r, connect.NewError(connect.CodeUnauthenticated, err))
		return
	}
	http.Error(w, err.Error(), http.StatusUnauthorized)
}

// checkToken returns nil when h carries the token whose SHA-256 is want.
// Both sides are hashed so that the constant-time compare does not depend
// on the length either.
func checkToken(want [sha256.Size]byte, h http.Header) error {
	tok, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return errNoToken
	}
	got := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return errWrongToken
	}
	return nil
}
