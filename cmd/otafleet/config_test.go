package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/otafleet/otafleet/actors/device/devicefsm"
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
			return c.Engine.Device.Download == 90*time.Minute && c.LogFormat == "json" && c.CoAPSPublic == "ota.example.com:5684" && c.MQTTRequireTimestamp && c.MQTTUplinkRate == 2.5 &&
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
		if err := cfg.loadFile(tc.file, fs.Changed); err != nil {
			t.Fatal(err)
		}
		if cfg.Engine.Device.Online != tc.online || !tc.check(cfg) {
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
	file := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	bad := file("bad.yaml", "no-such-key: 1\n")
	ini := file("c.ini", "")
	badValue := file("bad-value.yaml", "timeout-online: [1, 2]\n")
	list := file("list.yaml", "- timeout-online: 2h\n")
	badTOML := file("bad-value.toml", "api-addr = 5\n")
	nanos := file("nanos.toml", "timeout-online = 5\n")
	// Each config file case also gives a bad --log-format, and the bad
	// --log-level a bad --token-ttl (a later row): a value wrongly taken
	// fails on those instead of starting a server.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--config", bad}, "no-such-key"},
		{[]string{"serve", "--config", ini}, ".yaml, .yml or .toml"},
		{[]string{"serve", "--log-format", "xml"}, "--log-format"},
		{[]string{"serve", "--log-level", "verbose", "--token-ttl", "0s"}, `--log-level must be debug, info, warn or error, not "verbose"`},
		{[]string{"serve", "--timeout-download", "0s"}, "--timeout-download must be positive, got 0s"},
		{[]string{"serve", "--cell-cost-good", "60"}, "--cell-cost-good must be in 1..--cell-budget (50), got 60"},
		{[]string{"serve", "--cell-budget", "0"}, "--cell-budget must be > 0"},
		{[]string{"serve", "--cell-rsrp-bounds", "-125,-115,-105,-130"}, "RSRP boundaries must satisfy poor < medium < good <= max"},
		{[]string{"serve", "--cell-sinr-bounds", "1,2"}, `--cell-sinr-bounds wants four whole numbers POOR,MEDIUM,GOOD,MAX, not "1,2"`},
		{[]string{"serve", "--config", badValue, "--log-format", "xml"}, "bad-value.yaml: timeout-online: want a duration such as 90s, 5m or 2h"},
		{[]string{"serve", "--config", badTOML, "--log-format", "xml"}, "bad-value.toml: api-addr: want a text"},
		{[]string{"serve", "--config", list, "--log-format", "xml"}, "list.yaml: want settings as key: value lines"},
		{[]string{"serve", "--config", nanos, "--log-format", "xml"}, "nanos.toml: timeout-online: want a duration such as 90s, 5m or 2h"},
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
		// The user's words: no Go package prefix or type, no field name.
		for _, goish := range []string{"fsm:", "time.Duration", "int64", "!!seq", "map[", "Download ", "CostGood"} {
			if strings.Contains(errb.String(), goish) {
				t.Errorf("%v: %q in %q", tc.args, goish, errb.String())
			}
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

// TestSettingsTable: every row of the settings table is a flag and a
// config-file key (YAML and TOML) that set the same field to the same value,
// a flag given on the command line wins over the file, and an engine
// setting reaches the engine's configuration. Every field of serveConfig,
// every timeout of the device machine (but the one derived from another)
// and every field of the cell configuration is some row's.
func TestSettingsTable(t *testing.T) {
	dir := t.TempDir()
	seen := map[string]bool{}
	for _, s := range settings() {
		if seen[s.name] || s.usage == "" {
			t.Errorf("%s: a second row of that name, or no usage", s.name)
		}
		seen[s.name] = true
		def := defaultServeConfig()
		flagArg, yamlValue, tomlValue := sampleSetting(t, s.name, s.field(&def))

		fromFlag := defaultServeConfig()
		fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
		fromFlag.flags(fs)
		if f := fs.Lookup(s.name); f == nil || f.Usage != s.usage {
			t.Errorf("%s: flag %+v", s.name, f)
			continue
		}
		if err := fs.Parse([]string{"--" + s.name + "=" + flagArg}); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if reflect.DeepEqual(fromFlag, def) {
			t.Errorf("--%s=%s changes nothing", s.name, flagArg)
		}
		for _, file := range []struct{ name, text string }{
			{"c.yaml", s.name + ": " + yamlValue + "\n"},
			{"c.toml", s.name + " = " + tomlValue + "\n"},
		} {
			path := filepath.Join(dir, file.name)
			if err := os.WriteFile(path, []byte(file.text), 0o644); err != nil {
				t.Fatal(err)
			}
			fromFile := defaultServeConfig()
			if err := fromFile.loadFile(path, func(string) bool { return false }); err != nil {
				t.Fatalf("%s: %v", file.text, err)
			}
			if !reflect.DeepEqual(fromFile, fromFlag) {
				t.Errorf("%q sets %v, the flag %v", file.text, reflect.ValueOf(s.field(&fromFile)).Elem(), reflect.ValueOf(s.field(&fromFlag)).Elem())
			}
			given := defaultServeConfig()
			if err := given.loadFile(path, func(name string) bool { return name == s.name }); err != nil || !reflect.DeepEqual(given, def) {
				t.Errorf("%q with its flag given: %v, changed %v", file.text, err, !reflect.DeepEqual(given, def))
			}
		}
		if s.engine != nil {
			eng, err := fromFlag.engineConfig()
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			if b, ok := s.engine(&eng).(*rangeBounds); ok {
				if got, want := b.String(), flagArg; got != want {
					t.Errorf("--%s=%s: the engine has %v", s.name, flagArg, got)
				}
			} else if got, want := reflect.ValueOf(s.engine(&eng)).Elem().Interface(), reflect.ValueOf(s.field(&fromFlag)).Elem().Interface(); got != want {
				t.Errorf("--%s=%s: the engine has %v", s.name, flagArg, got)
			}
		}
	}

	// Every field is set by exactly one row.
	var c serveConfig
	rows := map[uintptr]string{}
	for _, s := range settings() {
		ps := []uintptr{reflect.ValueOf(s.field(&c)).Pointer()}
		if b, ok := s.field(&c).(*rangeBounds); ok {
			ps = ps[:0]
			for _, f := range b {
				ps = append(ps, reflect.ValueOf(f).Pointer())
			}
		}
		for _, p := range ps {
			if other, dup := rows[p]; dup {
				t.Errorf("--%s and --%s set the same field", s.name, other)
			}
			rows[p] = s.name
		}
	}
	want := func(owner string, v reflect.Value, skip ...string) {
		for i := 0; i < v.NumField(); i++ {
			name := v.Type().Field(i).Name
			if slices.Contains(skip, name) {
				continue
			}
			if _, ok := rows[v.Field(i).Addr().Pointer()]; !ok {
				t.Errorf("%s.%s has no row in the settings table", owner, name)
			}
		}
	}
	want("serveConfig", reflect.ValueOf(&c).Elem(), "Engine")
	want("devicefsm.Config", reflect.ValueOf(&c.Engine.Device).Elem(), "OnlineMQTT")
	want("cellfsm.Config", reflect.ValueOf(&c.Engine.Cell).Elem())
	if _, ok := rows[reflect.ValueOf(&c.Engine.PassivateAfter).Pointer()]; !ok {
		t.Error("actors.Config.PassivateAfter has no row in the settings table")
	}
}

// TestDerivedMQTTTimeouts: the MQTT online wait is --timeout-online plus an
// hour, as the spec's defaults are (24 h, 25 h), and the external broker's
// probing outlasts it.
func TestDerivedMQTTTimeouts(t *testing.T) {
	def := devicefsm.DefaultConfig()
	if devicefsm.OnlineMQTTFor(def.Online) != def.OnlineMQTT || def.Online != 24*time.Hour || def.OnlineMQTT != 25*time.Hour {
		t.Fatalf("defaults: %v, %v", def.Online, def.OnlineMQTT)
	}
	for _, online := range []time.Duration{time.Minute, 24 * time.Hour, 72 * time.Hour} {
		c := defaultServeConfig()
		c.Engine.Device.Online = online
		eng, err := c.engineConfig()
		if err != nil || eng.Device.Online != online || eng.Device.OnlineMQTT != online+time.Hour {
			t.Errorf("--timeout-online=%v: %v, %v, %v", online, eng.Device.Online, eng.Device.OnlineMQTT, err)
		}
		if c.probeFor() != eng.Device.OnlineMQTT+time.Hour {
			t.Errorf("--timeout-online=%v: probing for %v", online, c.probeFor())
		}
	}
}

// sampleSetting is a value of the field of setting name unlike its current
// one, written as a flag argument, a YAML value and a TOML value. The
// engine's cell settings stay valid: the budget grows, a cost shrinks (to
// no less than 1), each range bound moves up by one.
func sampleSetting(t *testing.T, name string, field any) (flagArg, yamlValue, tomlValue string) {
	t.Helper()
	switch p := field.(type) {
	case *uint32:
		v := *p - 1
		if *p <= 1 || name == "cell-budget" {
			v = *p + 1
		}
		s := strconv.FormatUint(uint64(v), 10)
		return s, s, s
	case *rangeBounds:
		var vs []string
		for _, b := range p {
			vs = append(vs, strconv.Itoa(int(*b)+1))
		}
		list := strings.Join(vs, ",")
		return list, "[" + strings.Join(vs, ", ") + "]", strconv.Quote(list)
	case *string:
		v := "http://x" + *p
		return v, strconv.Quote(v), strconv.Quote(v)
	case *bool:
		v := strconv.FormatBool(!*p)
		return v, v, v
	case *int:
		v := strconv.Itoa(*p + 3)
		return v, v, v
	case *int64:
		v := strconv.FormatInt(*p+3, 10)
		return v, v, v
	case *float64:
		v := strconv.FormatFloat(*p+0.5, 'f', -1, 64)
		return v, v, v
	case *time.Duration:
		v := (*p + 90*time.Second).String()
		return v, strconv.Quote(v), strconv.Quote(v)
	}
	t.Fatalf("a field of type %T", field)
	return
}

// TestServeSmallThings: serve's JSON log writes durations in seconds; the
// default data folder is ignored by git; the help of --simulate and
// --mqtt-addr says what they do today.
func TestServeSmallThings(t *testing.T) {
	var b bytes.Buffer
	cfg := defaultServeConfig()
	cfg.LogFormat = "json"
	newLogger(cfg, &b).Info("registered", "lifetime", 5*time.Minute)
	var line map[string]any
	if err := json.Unmarshal(b.Bytes(), &line); err != nil || line["lifetime"] != 300.0 {
		t.Errorf("a duration in the JSON log: %s %v", b.Bytes(), err)
	}

	ignore, err := os.ReadFile("../../.gitignore")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(ignore)), defaultServeConfig().DataDir+"/") {
		t.Errorf(".gitignore does not ignore the default data folder %s:\n%s", defaultServeConfig().DataDir, ignore)
	}

	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("serve --help: exit %d %s", code, errb.String())
	}
	for flag, want := range map[string][]string{
		"--simulate ":  {"sim-0 ... sim-N-1", "no socket", "otafleet sim", "--simulate-campaign"},
		"--mqtt-addr ": {"not started with --mqtt-broker"},
	} {
		i := strings.Index(out.String(), flag)
		if i < 0 {
			t.Fatalf("serve --help has no %s", flag)
		}
		line, _, _ := strings.Cut(out.String()[i:], "\n")
		for _, w := range want {
			if !strings.Contains(line, w) {
				t.Errorf("serve --help: %s does not say %q: %s", flag, w, line)
			}
		}
	}
}
