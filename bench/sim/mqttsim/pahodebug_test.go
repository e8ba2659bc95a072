package mqttsim

import (
	"log"
	"os"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// PAHODEBUG=1 go test ... prints paho's own logs, for debugging the
// connection handling.
func init() {
	if os.Getenv("PAHODEBUG") != "" {
		paho.DEBUG = log.New(os.Stderr, "DEBUG ", 0)
		paho.ERROR = log.New(os.Stderr, "ERROR ", 0)
		paho.WARN = log.New(os.Stderr, "WARN ", 0)
	}
}
