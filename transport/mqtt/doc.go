// Package mqtt connects IoTDA-style MQTT devices to the engine (spec section
// 2). The embedded broker (Broker, on mochi-mqtt) logs devices in with their
// client ID and HMAC password, confines each to its own topics, delivers
// its down topic to it as if subscribed (devices built for IoTDA never
// SUBSCRIBE), reports presence from the connection, takes uplinks in process
// through a broker hook so none can be dropped by a subscriber queue, and
// publishes the engine's downlinks straight to the device's connections (no
// topic index: a connected device costs no subscription); after an upgrade event it tells the engine the URL and
// access token it gave the device (DownloadOffered, for the timeline). The
// broker accepts connections itself (front.go): one small reader goroutine
// per connection hands each packet to a shared pool of workers, which drive
// mochi's server through its public API, so that an idle device costs no
// deep goroutine stack; a device's publish on its own up topic is handled
// there without mochi's publish path (Broker.uplink), and mochi's event loop
// is not run, so nothing walks the connected devices on a timer. The wire
// format lives in the pure subpackage iotda.
//
// Devices are treated as adversaries: a connection must send a small CONNECT
// (at most MaxConnectSize bytes) soon after it opens, connections are
// limited in total and per source address, a CONNECT with a will message is
// refused, failed logins are throttled per device and per source address,
// and each connected device's uplinks pass a token bucket; refusals are
// counted in Prometheus metrics and logged at a bounded rate.
package mqtt
