// Package widget is a fixture actor shell: it may use transports.
package widget

import "example.com/fixture/transport/mqtt"

const T = mqtt.Topic
