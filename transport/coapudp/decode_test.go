package coapudp

import (
	"bytes"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
)

// TestDecodeCopySized: an answer decoded into room for the options the
// reader found holds them all, also when the codec skips an option after
// the last one it keeps (a Size2 of an illegal length, RFC 7252 5.4.3),
// and owns its memory.
func TestDecodeCopySized(t *testing.T) {
	opts := pathOpts(t, "/19/0/0")
	opts = opts.Add(UintOption(message.ContentFormat, uint32(message.AppOctets)))
	opts = opts.Add(message.Option{ID: message.Size2, Value: []byte{1, 2, 3, 4, 5}}) // longer than 4 bytes: skipped, after the others
	b, err := encode(nil, message.Message{Code: codes.Content, Type: message.Acknowledgement, MessageID: 7,
		Token: message.Token("tk"), Options: opts, Payload: []byte("frame")})
	if err != nil {
		t.Fatal(err)
	}
	read := message.Message{Options: make(message.Options, 0, maxOptions)}
	if _, err := coder.DefaultCoder.Decode(b, &read); err != nil { // as the reader does
		t.Fatal(err)
	}
	m, err := decodeCopy(b, len(read.Options))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Options) != len(read.Options) || len(m.Options) != 4 { // 3 path segments, the content format
		t.Fatalf("options %v, the reader's %v", m.Options, read.Options)
	}
	if cap(m.Options) != len(m.Options) {
		t.Errorf("options cap %d, len %d", cap(m.Options), len(m.Options))
	}
	for i := range b {
		b[i] = 0 // the reader's buffer, reused
	}
	if p, _ := m.Options.Path(); p != "/19/0/0" || !bytes.Equal(m.Payload, []byte("frame")) || string(m.Token) != "tk" {
		t.Errorf("copy: path %q payload %q token %q", p, m.Payload, m.Token)
	}
}
