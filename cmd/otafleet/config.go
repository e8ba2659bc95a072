package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/internal/minrate"
	"github.com/otafleet/otafleet/transport/mqtt"
)

// serveConfig is everything `otafleet serve` takes: flags, or keys of the same
// names in a --config file (YAML or TOML, by extension); flags given on the
// command line win over the file.
type serveConfig struct {
	DataDir   string `yaml:"data-dir" toml:"data-dir"`
	APIAddr   string `yaml:"api-addr" toml:"api-addr"`
	LogFormat string `yaml:"log-format" toml:"log-format"`
	LogLevel  string `yaml:"log-level" toml:"log-level"`

	// The protocol timeouts of spec 6.1 (T1..T11).
	TimeoutOnline        time.Duration `yaml:"timeout-online" toml:"timeout-online"`
	TimeoutVersionReport time.Duration `yaml:"timeout-version-report" toml:"timeout-version-report"`
	TimeoutRadioQuery    time.Duration `yaml:"timeout-radio-query" toml:"timeout-radio-query"`
	TimeoutCellQuery     time.Duration `yaml:"timeout-cell-query" toml:"timeout-cell-query"`
	TimeoutDownloadStart time.Duration `yaml:"timeout-download-start" toml:"timeout-download-start"`
	TimeoutDownload      time.Duration `yaml:"timeout-download" toml:"timeout-download"`
	TimeoutMQTTResult    time.Duration `yaml:"timeout-mqtt-result" toml:"timeout-mqtt-result"`
	TimeoutUpdateStart   time.Duration `yaml:"timeout-update-start" toml:"timeout-update-start"`
	TimeoutUpdateResult  time.Duration `yaml:"timeout-update-result" toml:"timeout-update-result"`
	TimeoutVersionCheck  time.Duration `yaml:"timeout-version-check" toml:"timeout-version-check"`
	TokenTTL             time.Duration `yaml:"token-ttl" toml:"token-ttl"`

	// Device transports: the embedded MQTT broker and the package download
	// server ("" disables a listener).
	MQTTAddr  string `yaml:"mqtt-addr" toml:"mqtt-addr"`
	MQTTSAddr string `yaml:"mqtts-addr" toml:"mqtts-addr"`
	// What a device may cost the embedded broker (0: no limit).
	MQTTRequireTimestamp        bool          `yaml:"mqtt-require-timestamp" toml:"mqtt-require-timestamp"`
	MQTTConnectTimeout          time.Duration `yaml:"mqtt-connect-timeout" toml:"mqtt-connect-timeout"`
	MQTTMaxConnections          int           `yaml:"mqtt-max-connections" toml:"mqtt-max-connections"`
	MQTTMaxConnectionsPerSource int           `yaml:"mqtt-max-connections-per-source" toml:"mqtt-max-connections-per-source"`
	MQTTLoginFailuresPerDevice  int           `yaml:"mqtt-login-failures-per-device" toml:"mqtt-login-failures-per-device"`
	MQTTLoginFailuresPerSource  int           `yaml:"mqtt-login-failures-per-source" toml:"mqtt-login-failures-per-source"`
	MQTTUplinkRate              float64       `yaml:"mqtt-uplink-rate" toml:"mqtt-uplink-rate"`
	MQTTUplinkBurst             int           `yaml:"mqtt-uplink-burst" toml:"mqtt-uplink-burst"`
	// External broker mode.
	MQTTBroker        string        `yaml:"mqtt-broker" toml:"mqtt-broker"`
	MQTTClientID      string        `yaml:"mqtt-client-id" toml:"mqtt-client-id"`
	MQTTProbeInterval time.Duration `yaml:"mqtt-probe-interval" toml:"mqtt-probe-interval"`
	DownloadAddr      string        `yaml:"download-addr" toml:"download-addr"`
	CoAPAddr          string        `yaml:"coap-addr" toml:"coap-addr"`
	CoAPPublic        string        `yaml:"coap-public-addr" toml:"coap-public-addr"`
	CoAPSAddr         string        `yaml:"coaps-addr" toml:"coaps-addr"`
	CoAPSPublic       string        `yaml:"coaps-public-addr" toml:"coaps-public-addr"`
	DownloadTLS       bool          `yaml:"download-tls" toml:"download-tls"`
	DownloadURL       string        `yaml:"download-url" toml:"download-url"`
	TLSCert           string        `yaml:"tls-cert" toml:"tls-cert"`
	TLSKey            string        `yaml:"tls-key" toml:"tls-key"`

	// The HTTP servers (API and package downloads): connection limits,
	// timeouts before and between requests, and the minimum transfer rate
	// of request and response bodies (see internal/minrate).
	APIMaxConns       int           `yaml:"api-max-conns" toml:"api-max-conns"`
	DownloadMaxConns  int           `yaml:"download-max-conns" toml:"download-max-conns"`
	HTTPHeaderTimeout time.Duration `yaml:"http-header-timeout" toml:"http-header-timeout"`
	HTTPIdleTimeout   time.Duration `yaml:"http-idle-timeout" toml:"http-idle-timeout"`
	MinTransferRate   int64         `yaml:"min-transfer-rate" toml:"min-transfer-rate"`
	MinTransferWindow time.Duration `yaml:"min-transfer-window" toml:"min-transfer-window"`

	PassivateAfter time.Duration `yaml:"passivate-after" toml:"passivate-after"`
	VerifyStore    bool          `yaml:"verify-store" toml:"verify-store"`
	// The key sealing device secrets and PSKs in the store, and the one it
	// replaces (rotation).
	SealKeyFile         string `yaml:"seal-key-file" toml:"seal-key-file"`
	PreviousSealKeyFile string `yaml:"previous-seal-key-file" toml:"previous-seal-key-file"`

	// Simulation (until the real transports land): in-process scripted devices.
	Simulate         int           `yaml:"simulate" toml:"simulate"`
	SimulateProtocol string        `yaml:"simulate-protocol" toml:"simulate-protocol"`
	SimulateCells    int           `yaml:"simulate-cells" toml:"simulate-cells"`
	SimulateCampaign bool          `yaml:"simulate-campaign" toml:"simulate-campaign"`
	SimulateDelay    time.Duration `yaml:"simulate-delay" toml:"simulate-delay"`
}

func defaultServeConfig() serveConfig {
	d := devicefsm.DefaultConfig()
	return serveConfig{
		DataDir:              "otafleet-data",
		APIAddr:              "127.0.0.1:8080",
		LogFormat:            "text",
		LogLevel:             "info",
		TimeoutOnline:        d.Online,
		TimeoutVersionReport: d.VersionReport,
		TimeoutRadioQuery:    d.RadioQuery,
		TimeoutCellQuery:     d.CellQuery,
		TimeoutDownloadStart: d.DownloadStart,
		TimeoutDownload:      d.Download,
		TimeoutMQTTResult:    d.MQTTResult,
		TimeoutUpdateStart:   d.UpdateStart,
		TimeoutUpdateResult:  d.UpdateResult,
		TimeoutVersionCheck:  d.VersionCheck,
		TokenTTL:             24 * time.Hour,
		MQTTAddr:             "127.0.0.1:1883",
		DownloadAddr:         "127.0.0.1:8943",
		CoAPAddr:             "127.0.0.1:5683",
		CoAPSAddr:            "127.0.0.1:5684",
		DownloadTLS:          true,
		MQTTClientID:         "otafleet",
		MQTTProbeInterval:    time.Minute,
		APIMaxConns:          1024,
		DownloadMaxConns:     10000,
		HTTPHeaderTimeout:    30 * time.Second,
		HTTPIdleTimeout:      2 * time.Minute,
		MinTransferRate:      128,
		MinTransferWindow:    time.Minute,
		PassivateAfter:       time.Minute,
		SimulateProtocol:     "fota",
		SimulateCells:        10,
		SimulateDelay:        50 * time.Millisecond,

		MQTTConnectTimeout:          mqtt.DefaultConnectTimeout,
		MQTTMaxConnections:          mqtt.DefaultMaxConnections,
		MQTTMaxConnectionsPerSource: mqtt.DefaultMaxConnectionsPerSource,
		MQTTLoginFailuresPerDevice:  mqtt.DefaultLoginFailuresPerDevice,
		MQTTLoginFailuresPerSource:  mqtt.DefaultLoginFailuresPerSource,
		MQTTUplinkRate:              mqtt.DefaultUplinkRate,
		MQTTUplinkBurst:             mqtt.DefaultUplinkBurst,
	}
}

func (c *serveConfig) flags(fs *pflag.FlagSet) {
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "folder of the journal, registry, api-token and addrs.json")
	fs.StringVar(&c.APIAddr, "api-addr", c.APIAddr, "address of the API, gRPC health and /metrics (HTTP/1.1 and h2c); port 0 picks one")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
	fs.DurationVar(&c.TimeoutOnline, "timeout-online", c.TimeoutOnline, "T1: wait for the device to come online (LwM2M; MQTT waits one hour more)")
	fs.DurationVar(&c.TimeoutVersionReport, "timeout-version-report", c.TimeoutVersionReport, "T2: wait for the version report")
	fs.DurationVar(&c.TimeoutRadioQuery, "timeout-radio-query", c.TimeoutRadioQuery, "T3: wait for RSRP, SINR and cell ID")
	fs.DurationVar(&c.TimeoutCellQuery, "timeout-cell-query", c.TimeoutCellQuery, "T4: wait for the cell ID alone")
	fs.DurationVar(&c.TimeoutDownloadStart, "timeout-download-start", c.TimeoutDownloadStart, "T5: wait for the device to start downloading")
	fs.DurationVar(&c.TimeoutDownload, "timeout-download", c.TimeoutDownload, "T6: download window, from the notification")
	fs.DurationVar(&c.TimeoutMQTTResult, "timeout-mqtt-result", c.TimeoutMQTTResult, "T7: MQTT download, upgrade and report, from the notification")
	fs.DurationVar(&c.TimeoutUpdateStart, "timeout-update-start", c.TimeoutUpdateStart, "T8: wait for the device to start updating")
	fs.DurationVar(&c.TimeoutUpdateResult, "timeout-update-result", c.TimeoutUpdateResult, "T9: wait for the upgrade result")
	fs.DurationVar(&c.TimeoutVersionCheck, "timeout-version-check", c.TimeoutVersionCheck, "T10: version re-check after the result")
	fs.DurationVar(&c.TokenTTL, "token-ttl", c.TokenTTL, "T11: download token lifetime (used by the download server)")
	fs.StringVar(&c.MQTTAddr, "mqtt-addr", c.MQTTAddr, "embedded MQTT broker, plain (IoTDA devices use plain MQTT only on a port containing 1883); \"\" turns it off")
	fs.StringVar(&c.MQTTSAddr, "mqtts-addr", c.MQTTSAddr, "embedded MQTT broker over TLS (e.g. 127.0.0.1:8883), with the --tls-cert certificate; \"\" (default) turns it off")
	fs.BoolVar(&c.MQTTRequireTimestamp, "mqtt-require-timestamp", c.MQTTRequireTimestamp, "embedded broker: accept only sign type 1 client IDs (the timestamp is checked, so a captured password expires); sign type 0 is refused as a bad client ID")
	fs.DurationVar(&c.MQTTConnectTimeout, "mqtt-connect-timeout", c.MQTTConnectTimeout, "embedded broker: a new connection must send its CONNECT (at most 4 KiB) within this")
	fs.IntVar(&c.MQTTMaxConnections, "mqtt-max-connections", c.MQTTMaxConnections, "embedded broker: most open connections in all (0: no limit)")
	fs.IntVar(&c.MQTTMaxConnectionsPerSource, "mqtt-max-connections-per-source", c.MQTTMaxConnectionsPerSource, "embedded broker: most open connections from one IP address; devices behind a carrier NAT share one (0: no limit)")
	fs.IntVar(&c.MQTTLoginFailuresPerDevice, "mqtt-login-failures-per-device", c.MQTTLoginFailuresPerDevice, "embedded broker: failed logins of one device allowed per minute; beyond them its logins are refused (0x05) unchecked (0: no limit)")
	fs.IntVar(&c.MQTTLoginFailuresPerSource, "mqtt-login-failures-per-source", c.MQTTLoginFailuresPerSource, "embedded broker: failed logins from one IP address allowed per minute; beyond them its logins are refused (0x05) unchecked (0: no limit)")
	fs.Float64Var(&c.MQTTUplinkRate, "mqtt-uplink-rate", c.MQTTUplinkRate, "embedded broker: reports a second each device may publish, beyond --mqtt-uplink-burst; one beyond is refused, not acknowledged (0: no limit)")
	fs.IntVar(&c.MQTTUplinkBurst, "mqtt-uplink-burst", c.MQTTUplinkBurst, "embedded broker: reports a device may publish at once before --mqtt-uplink-rate applies")
	fs.StringVar(&c.MQTTBroker, "mqtt-broker", c.MQTTBroker, "use this external MQTT 3.1.1 broker (tcp://[user:pass@]host:port or ssl://...) instead of the embedded one; see the README for its required settings")
	fs.StringVar(&c.MQTTClientID, "mqtt-client-id", c.MQTTClientID, "with --mqtt-broker: the client ID of otafleet's persistent session")
	fs.DurationVar(&c.MQTTProbeInterval, "mqtt-probe-interval", c.MQTTProbeInterval, "with --mqtt-broker: how often a device a job waits for is sent version_query again")
	fs.StringVar(&c.CoAPAddr, "coap-addr", c.CoAPAddr, "LwM2M server over CoAP/UDP (registration, device management, firmware packages block-wise); \"\" turns it off")
	fs.StringVar(&c.CoAPSAddr, "coaps-addr", c.CoAPSAddr, "LwM2M server over DTLS 1.2 with pre-shared keys (identity: the device ID); \"\" turns it off")
	fs.StringVar(&c.CoAPPublic, "coap-public-addr", c.CoAPPublic, "host:port LwM2M devices reach --coap-addr under, written into package URIs; default: the listener's address")
	fs.StringVar(&c.CoAPSPublic, "coaps-public-addr", c.CoAPSPublic, "host:port LwM2M devices reach --coaps-addr under, written into the coaps:// package URIs of devices registered over DTLS; default: the listener's address")
	fs.StringVar(&c.DownloadAddr, "download-addr", c.DownloadAddr, "package download server for MQTT devices (HTTP range requests, bearer tokens); \"\" turns it off")
	fs.BoolVar(&c.DownloadTLS, "download-tls", c.DownloadTLS, "serve downloads over HTTPS (false: plain HTTP)")
	fs.StringVar(&c.DownloadURL, "download-url", c.DownloadURL, "base URL devices download from (e.g. https://ota.example.com:8943); default: the --download-addr listener's address")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM certificate for HTTPS downloads and MQTTS; default: a self-signed one kept in the data dir")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM private key of --tls-cert")
	fs.IntVar(&c.APIMaxConns, "api-max-conns", c.APIMaxConns, "most connections the API serves at once; more wait to be accepted")
	fs.IntVar(&c.DownloadMaxConns, "download-max-conns", c.DownloadMaxConns, "most connections the package download server serves at once; more wait to be accepted")
	fs.DurationVar(&c.HTTPHeaderTimeout, "http-header-timeout", c.HTTPHeaderTimeout, "API and download server: time for a request's headers (and the TLS handshake) to arrive")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", c.HTTPIdleTimeout, "API and download server: a kept-alive connection with no request in flight is closed after this long")
	fs.Int64Var(&c.MinTransferRate, "min-transfer-rate", c.MinTransferRate, "API and download server: bytes per second a request or response body must move at least, measured over --min-transfer-window of transfer time (waits between messages of a stream do not count); 0 turns it off")
	fs.DurationVar(&c.MinTransferWindow, "min-transfer-window", c.MinTransferWindow, "the window of --min-transfer-rate: each rate × window bytes must move within one window")
	fs.DurationVar(&c.PassivateAfter, "passivate-after", c.PassivateAfter, "idle device and cell actors leave memory after this long")
	fs.BoolVar(&c.VerifyStore, "verify-store", c.VerifyStore, "check every journal entry, record and blob at start (a full scan); without it, entries are checked when read, and those of actors with work in flight at every start")
	fs.StringVar(&c.SealKeyFile, "seal-key-file", c.SealKeyFile, "file holding the key that seals device secrets and PSKs in the store: 32 bytes as 64 hex digits, mode 0600 (make one with: openssl rand -hex 32); default $"+envSealKeyFile+"; without it the store keeps its own key. A store that keeps its own key is re-sealed under this one at start")
	fs.StringVar(&c.PreviousSealKeyFile, "previous-seal-key-file", c.PreviousSealKeyFile, "with --seal-key-file: the key file the store was sealed with until now; a store sealed with it is re-sealed under --seal-key-file at start (key rotation)")
	fs.IntVar(&c.Simulate, "simulate", c.Simulate, "run N in-process simulated devices (demo and tests, until the real transports arrive)")
	fs.StringVar(&c.SimulateProtocol, "simulate-protocol", c.SimulateProtocol, "protocol of simulated devices: mqtt, fota, pcp or mixed")
	fs.IntVar(&c.SimulateCells, "simulate-cells", c.SimulateCells, "radio cells the simulated devices are spread over")
	fs.BoolVar(&c.SimulateCampaign, "simulate-campaign", c.SimulateCampaign, "on first start, create a task upgrading every simulated device")
	fs.DurationVar(&c.SimulateDelay, "simulate-delay", c.SimulateDelay, "how long a simulated device takes per protocol step")
}

// loadFile reads a YAML or TOML config file into c; flags set on the command
// line are re-applied afterwards by the caller.
func (c *serveConfig) loadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".yaml", ".yml":
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: %w", path, err)
		}
	case ".toml":
		md, err := toml.Decode(string(b), c)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if u := md.Undecoded(); len(u) > 0 {
			return fmt.Errorf("%s: unknown keys %v", path, u)
		}
	default:
		return fmt.Errorf("%s: config files are .yaml, .yml or .toml, not %q", path, ext)
	}
	return nil
}

// merge takes every field from file whose flag was not given on the command
// line (changed reports that), so command-line flags win over the file.
func (c *serveConfig) merge(file serveConfig, changed func(name string) bool) {
	dst, src := reflect.ValueOf(c).Elem(), reflect.ValueOf(file)
	for i := 0; i < dst.NumField(); i++ {
		if name := dst.Type().Field(i).Tag.Get("yaml"); name != "" && !changed(name) {
			dst.Field(i).Set(src.Field(i))
		}
	}
}

func (c serveConfig) validate() error {
	if c.DataDir == "" {
		return errors.New("--data-dir must not be empty")
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("--log-format must be text or json, not %q", c.LogFormat)
	}
	switch c.SimulateProtocol {
	case "mqtt", "fota", "pcp", "mixed":
	default:
		return fmt.Errorf("--simulate-protocol must be mqtt, fota, pcp or mixed, not %q", c.SimulateProtocol)
	}
	if c.Simulate < 0 || c.SimulateCells < 1 {
		return errors.New("--simulate must be >= 0 and --simulate-cells >= 1")
	}
	if c.MQTTBroker != "" && (c.MQTTClientID == "" || c.MQTTProbeInterval <= 0) {
		return errors.New("--mqtt-broker needs a --mqtt-client-id and a positive --mqtt-probe-interval")
	}
	if c.MQTTConnectTimeout <= 0 || c.MQTTUplinkBurst < 1 {
		return errors.New("--mqtt-connect-timeout must be positive and --mqtt-uplink-burst at least 1")
	}
	if c.MQTTMaxConnections < 0 || c.MQTTMaxConnectionsPerSource < 0 || c.MQTTLoginFailuresPerDevice < 0 ||
		c.MQTTLoginFailuresPerSource < 0 || c.MQTTUplinkRate < 0 {
		return errors.New("--mqtt-max-connections, --mqtt-max-connections-per-source, --mqtt-login-failures-per-device, --mqtt-login-failures-per-source and --mqtt-uplink-rate must not be negative (0: no limit)")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if c.DownloadURL != "" && !strings.HasPrefix(c.DownloadURL, "http://") && !strings.HasPrefix(c.DownloadURL, "https://") {
		return fmt.Errorf("--download-url %q: want http://host:port or https://host:port", c.DownloadURL)
	}
	if c.PreviousSealKeyFile != "" && c.SealKeyFile == "" {
		return errors.New("--previous-seal-key-file needs --seal-key-file (the new key)")
	}
	if c.APIMaxConns < 1 || c.DownloadMaxConns < 1 {
		return errors.New("--api-max-conns and --download-max-conns must be at least 1")
	}
	if c.HTTPHeaderTimeout <= 0 || c.HTTPIdleTimeout <= 0 {
		return errors.New("--http-header-timeout and --http-idle-timeout must be positive")
	}
	if err := c.minRate().Validate(); err != nil {
		return fmt.Errorf("--min-transfer-rate must not be negative, and --min-transfer-window must be positive: %w", err)
	}
	if c.TokenTTL <= 0 || c.PassivateAfter <= 0 || c.SimulateDelay < 0 {
		return errors.New("--token-ttl and --passivate-after must be positive, --simulate-delay not negative")
	}
	_, err := c.engineConfig()
	return err
}

// minRate is the minimum transfer rate of the HTTP servers.
func (c serveConfig) minRate() minrate.Config {
	return minrate.Config{Rate: c.MinTransferRate, Window: c.MinTransferWindow}
}

// engineConfig maps the timeouts onto the engine's configuration.
func (c serveConfig) engineConfig() (actors.Config, error) {
	cfg := actors.Config{}.Default()
	d := &cfg.Device
	d.Online, d.OnlineMQTT = c.TimeoutOnline, c.TimeoutOnline+time.Hour
	d.VersionReport, d.RadioQuery, d.CellQuery = c.TimeoutVersionReport, c.TimeoutRadioQuery, c.TimeoutCellQuery
	d.DownloadStart, d.Download, d.MQTTResult = c.TimeoutDownloadStart, c.TimeoutDownload, c.TimeoutMQTTResult
	d.UpdateStart, d.UpdateResult, d.VersionCheck = c.TimeoutUpdateStart, c.TimeoutUpdateResult, c.TimeoutVersionCheck
	cfg.PassivateAfter = c.PassivateAfter
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("timeouts: %w", err)
	}
	return cfg, nil
}
