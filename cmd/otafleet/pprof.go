package main

import (
	"crypto/subtle"
	"net/http"
	"net/http/pprof"
	"strings"
)

// pprofHandler serves Go's profiles under /debug/pprof/ to holders of the
// API token (a profile shows the process's internals): CPU, heap (with
// ?gc=1 after a garbage collection), goroutines, and the others of
// runtime/pprof.
func pprofHandler(token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="otafleet"`)
			http.Error(w, "the profiles need the API token (Authorization: Bearer ...)", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}
