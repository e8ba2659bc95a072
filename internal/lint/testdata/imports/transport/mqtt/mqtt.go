// Package mqtt is a fixture transport.
package mqtt

import "net"

const Topic = "t"

var _ net.Conn
