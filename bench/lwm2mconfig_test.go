package bench

import (
	"log/slog"
	"testing"
	"time"
)

// TestLwM2MConfigLifetime: the registration lifetime of SimConfig (sim
// --lwm2m-lifetime) reaches every LwM2M device. Without it the devices
// keep lwm2msim's 300 s, update every 150 s, and a device whose server was
// killed notices only when it next sends something (issue 23).
func TestLwM2MConfigLifetime(t *testing.T) {
	s := &Sim{log: slog.New(slog.DiscardHandler)}
	for _, life := range []time.Duration{0, 6 * time.Second} {
		for _, p := range []string{ProtoLwM2M, ProtoPCP} {
			cfg := SimConfig{Lifetime: life, CoAP: "127.0.0.1:1,127.0.0.1:2"}
			lc := s.lwm2mConfig(cfg, Device{ID: "dev-1", Protocol: p}, 0)
			if lc.Lifetime != life {
				t.Errorf("%s, SimConfig.Lifetime %v: the device's lifetime is %v", p, life, lc.Lifetime)
			}
			if lc.Server == "" || len(lc.Fallbacks) != 1 {
				t.Errorf("%s: server %q, fallbacks %v; want one of the two each", p, lc.Server, lc.Fallbacks)
			}
		}
	}
}
