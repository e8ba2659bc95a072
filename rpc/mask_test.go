package rpc

import (
	"strings"
	"testing"

	"github.com/otafleet/otafleet/messages"
)

// TestMaskToken: the download token is masked in every form a device is
// given it, and nothing else of the URI changes.
func TestMaskToken(t *testing.T) {
	const tok = "AQAAAABpZ2x3AAAAAAAAAAEFdGFzay0.c2lnbmF0dXJl" // a token's alphabet: base64url and "."
	const handle = "h7Qx2k"
	for _, tc := range []struct {
		name, uri, token, want string
	}{
		// The query form: LwM2M package URIs today, HTTP URLs with a token.
		{"coap query", "coap://127.0.0.1:5683/fw/pkg-1?t=" + tok, tok, "coap://127.0.0.1:5683/fw/pkg-1?t=***"},
		{"coaps query", "coaps://[::1]:5684/fw/pkg-1?t=" + tok, tok, "coaps://[::1]:5684/fw/pkg-1?t=***"},
		{"https query", "https://dl.example:8943/packages/p?x=1&t=" + tok + "&y=2", tok, "https://dl.example:8943/packages/p?x=1&t=***&y=2"},
		{"other parameter", "https://dl.example/packages/p?access_token=" + tok, tok, "https://dl.example/packages/p?access_token=***"},
		{"valueless parameter", "coap://h/fw/p?x&" + tok, tok, "coap://h/fw/p?x&***"},
		{"escaped in the query", "https://dl.example/p?t=" + strings.ReplaceAll(tok, ".", "%2E"), tok, "https://dl.example/p?t=***"},
		{"in a fragment", "https://dl.example/p#" + tok, tok, "https://dl.example/p#***"},
		// The path form: a short handle as a path segment, or part of one.
		{"handle segment", "coap://127.0.0.1:5683/fw/" + handle, handle, "coap://127.0.0.1:5683/fw/***"},
		{"handle after the package", "coap://127.0.0.1:5683/fw/pkg-1/" + handle, handle, "coap://127.0.0.1:5683/fw/pkg-1/***"},
		{"handle with a suffix", "coap://h/" + handle + ".bin", handle, "coap://h/***.bin"},
		{"escaped handle", "coap://h/fw/%68" + handle[1:], handle, "coap://h/fw/***"},
		{"both forms", "coap://h/fw/" + handle + "?t=" + handle, handle, "coap://h/fw/***?t=***"},
		// Nothing to mask: the token is the only thing recognised.
		{"another t", "coap://h/fw/p?t=something-else", tok, "coap://h/fw/p?t=something-else"},
		{"token unknown", "coap://h/fw/p?t=" + tok, "", "coap://h/fw/p?t=" + tok},
		{"no token in it", "https://127.0.0.1:8943/packages/pkg-1", tok, "https://127.0.0.1:8943/packages/pkg-1"},
		{"host only", "coap://h", handle, "coap://h"},
		{"the host is not masked", "coap://" + handle + "/fw/p", handle, "coap://" + handle + "/fw/p"},
		{"already masked", "coap://h/fw/***?t=***", handle, "coap://h/fw/***?t=***"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := maskToken(tc.uri, tc.token)
			if got != tc.want {
				t.Errorf("maskToken(%q, %q)\n\t= %s\n\twant %s", tc.uri, tc.token, got, tc.want)
			}
			if tc.token != "" && strings.Contains(got, tc.token) && !strings.HasPrefix(tc.name, "the host") && !strings.HasPrefix(tc.name, "token unknown") {
				t.Errorf("maskToken(%q) = %q still holds the token", tc.uri, got)
			}
			if again := maskToken(got, tc.token); again != got {
				t.Errorf("masking %q again gives %q", got, again)
			}
		})
	}
}

// TestOfferText: the timeline's text of a DownloadOffered, masked and
// revealed, for a token in the URI (LwM2M) and one sent beside it (MQTT).
func TestOfferText(t *testing.T) {
	for _, tc := range []struct {
		o              *messages.DownloadOffered
		masked, reveal string
	}{
		{&messages.DownloadOffered{Uri: "coap://127.0.0.1:5683/fw/p1?t=tok.sig", Token: "tok.sig"},
			"download URI coap://127.0.0.1:5683/fw/p1?t=***", "download URI coap://127.0.0.1:5683/fw/p1?t=tok.sig"},
		{&messages.DownloadOffered{Uri: "coap://127.0.0.1:5683/fw/h7Qx2k", Token: "h7Qx2k"},
			"download URI coap://127.0.0.1:5683/fw/***", "download URI coap://127.0.0.1:5683/fw/h7Qx2k"},
		{&messages.DownloadOffered{Uri: "https://127.0.0.1:8943/packages/p1", Token: "tok.sig"},
			"download URL https://127.0.0.1:8943/packages/p1 with access token ***", "download URL https://127.0.0.1:8943/packages/p1 with access token tok.sig"},
	} {
		if got := offerText(tc.o, false); got != tc.masked {
			t.Errorf("offerText(%v, masked) = %q, want %q", tc.o, got, tc.masked)
		}
		if got := offerText(tc.o, true); got != tc.reveal {
			t.Errorf("offerText(%v, revealed) = %q, want %q", tc.o, got, tc.reveal)
		}
	}
}
