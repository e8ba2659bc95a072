// Package helper is a fixture: not an fsm, so it may import mqtt.
package helper

import "example.com/fixture/transport/mqtt"

const T = mqtt.Topic
