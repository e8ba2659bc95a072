package mqtt

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a login is refused, the label of otafleet_mqtt_logins_refused_total.
const (
	loginWill      = "will"       // a CONNECT with a will message (0x05)
	loginClientID  = "client_id"  // malformed client ID (0x02)
	loginSignType  = "sign_type"  // sign type 0 with --mqtt-require-timestamp (0x02)
	loginKeepAlive = "keep_alive" // keep-alive outside 30–1200 s (0x02)
	loginThrottled = "throttled"  // too many failed logins of the device or source (0x05)
	loginUsername  = "username"   // user name is not the client ID's device (0x04)
	loginTimestamp = "timestamp"  // sign type 1 timestamp too far from the clock (0x04)
	loginUnknown   = "unknown_device"
	loginNoSecret  = "no_secret"
	loginPassword  = "password"
)

// Reasons an uplink is refused, the label of otafleet_mqtt_uplinks_refused_total.
const (
	uplinkRateLimited     = "rate_limited"      // beyond the device's token bucket: not acknowledged
	uplinkTooManyServices = "too_many_services" // more than iotda.MaxServices: acknowledged, dropped
	uplinkMalformed       = "malformed"         // not a valid event envelope: acknowledged, dropped
)

// brokerMetrics are the broker's Prometheus collectors.
type brokerMetrics struct {
	logins      *prometheus.CounterVec
	connections *prometheus.CounterVec
	uplinks     *prometheus.CounterVec
}

// newBrokerMetrics builds the collectors with every reason at zero and
// registers them with reg (a private registry when nil).
func newBrokerMetrics(reg prometheus.Registerer) (*brokerMetrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &brokerMetrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otafleet_mqtt_logins_refused_total", Help: "MQTT CONNECTs refused by the embedded broker, by reason.",
		}, []string{"reason"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otafleet_mqtt_connections_refused_total",
			Help: "MQTT connections closed before a login: beyond the connection limits, a first packet that is not a small CONNECT, or no CONNECT in time.",
		}, []string{"reason"}),
		uplinks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otafleet_mqtt_uplinks_refused_total",
			Help: "Device publishes on the up topic not handed to the engine, by reason (rate_limited ones are not acknowledged).",
		}, []string{"reason"}),
	}
	for _, r := range []string{loginWill, loginClientID, loginSignType, loginKeepAlive, loginThrottled, loginUsername,
		loginTimestamp, loginUnknown, loginNoSecret, loginPassword} {
		m.logins.WithLabelValues(r)
	}
	for _, r := range []string{refusedMaxConnections, refusedPerSource, refusedFirstPacket, refusedConnectTimeout} {
		m.connections.WithLabelValues(r)
	}
	for _, r := range []string{uplinkRateLimited, uplinkTooManyServices, uplinkMalformed} {
		m.uplinks.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.logins, m.connections, m.uplinks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
