package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/otafleet/otafleet/transport/mqtt"
)

func TestConfigFileAndFlags(t *testing.T) {
	dir := t.TempDir()
	yml := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(yml, []byte("timeout-online: 2h\ntimeout-download: 90m\nlog-format: json\ncoaps-public-addr: ota.example.com:5684\nmqtt-require-timestamp: true\nmqtt-uplink-rate: 2.5\nmqtt-max-connections-per-source: 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	toml := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(toml, []byte("timeout-online = \"3h\"\napi-addr = \"127.0.0.1:9999\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file   string
		args   []string
		online time.Duration
		check  func(serveConfig) bool
	}{
		{yml, nil, 2 * time.Hour, func(c serveConfig) bool {
			return c.TimeoutDownload == 90*time.Minute && c.LogFormat == "json" && c.CoAPSPublic == "ota.example.com:5684" && c.MQTTRequireTimestamp && c.MQTTUplinkRate == 2.5 &&
				c.MQTTMaxConnectionsPerSource == 0 && c.MQTTMaxConnections == 200_000 && c.MQTTConnectTimeout == 10*time.Second && c.validate() == nil
		}},
		{yml, []string{"--timeout-online", "5h", "--coaps-public-addr", "10.0.0.1:5684"}, 5 * time.Hour, func(c serveConfig) bool {
			return c.LogFormat == "json" && c.CoAPSPublic == "10.0.0.1:5684"
		}},
		{toml, nil, 3 * time.Hour, func(c serveConfig) bool { return c.APIAddr == "127.0.0.1:9999" }},
	} {
		cfg := defaultServeConfig()
		fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
		cfg.flags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		file := defaultServeConfig()
		if err := file.loadFile(tc.file); err != nil {
			t.Fatal(err)
		}
		cfg.merge(file, fs.Changed)
		if cfg.TimeoutOnline != tc.online || !tc.check(cfg) {
			t.Errorf("%s %v: %+v", tc.file, tc.args, cfg)
		}
		eng, err := cfg.engineConfig()
		if err != nil || eng.Device.Online != tc.online || eng.Device.OnlineMQTT != tc.online+time.Hour {
			t.Errorf("engine config: %+v %v", eng.Device, err)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("no-such-key: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ini := filepath.Join(dir, "c.ini")
	if err := os.WriteFile(ini, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--config", bad}, "no-such-key"},
		{[]string{"serve", "--config", ini}, ".yaml, .yml or .toml"},
		{[]string{"serve", "--log-format", "xml"}, "--log-format"},
		{[]string{"serve", "--timeout-download", "0s"}, "Download must be positive"},
		{[]string{"serve", "--simulate-protocol", "zigbee"}, "--simulate-protocol"},
		{[]string{"serve", "--mqtt-max-connections", "-1"}, "must not be negative"},
		{[]string{"serve", "--mqtt-connect-timeout", "0s"}, "--mqtt-connect-timeout must be positive"},
		{[]string{"serve", "--no-such-flag"}, "unknown flag"},
		{[]string{"no-such-verb"}, "unknown command"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errb)
		if code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

// TestBrokerConfig: the broker gets the flags' limits; a limit flag's 0
// reaches it as "no limit" (negative), since the broker's 0 means its
// default.
func TestBrokerConfig(t *testing.T) {
	c := defaultServeConfig()
	bc := c.brokerConfig()
	if bc.RequireTimestamp || bc.ConnectTimeout != mqtt.DefaultConnectTimeout || bc.MaxConnections != mqtt.DefaultMaxConnections ||
		bc.MaxConnectionsPerSource != mqtt.DefaultMaxConnectionsPerSource || bc.LoginFailuresPerDevice != mqtt.DefaultLoginFailuresPerDevice ||
		bc.LoginFailuresPerSource != mqtt.DefaultLoginFailuresPerSource || bc.UplinkRate != mqtt.DefaultUplinkRate || bc.UplinkBurst != mqtt.DefaultUplinkBurst {
		t.Fatalf("defaults: %+v", bc)
	}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	c.flags(fs)
	if err := fs.Parse([]string{"--mqtt-require-timestamp", "--mqtt-max-connections", "0", "--mqtt-max-connections-per-source", "0",
		"--mqtt-login-failures-per-device", "0", "--mqtt-login-failures-per-source", "0", "--mqtt-uplink-rate", "0", "--mqtt-uplink-burst", "7",
		"--mqtt-connect-timeout", "3s"}); err != nil {
		t.Fatal(err)
	}
	bc = c.brokerConfig()
	if !bc.RequireTimestamp || bc.MaxConnections >= 0 || bc.MaxConnectionsPerSource >= 0 || bc.LoginFailuresPerDevice >= 0 ||
		bc.LoginFailuresPerSource >= 0 || bc.UplinkRate >= 0 || bc.UplinkBurst != 7 || bc.ConnectTimeout != 3*time.Second {
		t.Fatalf("from flags: %+v", bc)
	}
}
