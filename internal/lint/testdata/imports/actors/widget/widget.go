// Package widget is a fixture actor shell: it imports an adapter, which only
// cmd, bench and transport may.
package widget

import "example.com/fixture/transport/mqtt"

const T = mqtt.Topic
