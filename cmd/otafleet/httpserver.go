package main

import (
	"log/slog"
	"net/http"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/minrate"
)

// newHTTPServer returns the server of the API or of the package downloads:
// h under the minimum transfer rate, with the header and idle timeouts and
// no whole-request read or write timeout (it would cut large uploads,
// large downloads and WatchTask streams; the minimum rate bounds them
// instead). The caller bounds its connections with netutil.LimitListener.
func newHTTPServer(cfg serveConfig, clk clock.Clock, h http.Handler, logger *slog.Logger) *http.Server {
	mr := cfg.minRate()
	mr.Clock = clk
	return &http.Server{
		Handler:           minrate.Handler(mr, h),
		ReadHeaderTimeout: cfg.HTTPHeaderTimeout,
		IdleTimeout:       cfg.HTTPIdleTimeout,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}
