package rpc_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
)

// TestAuthBeforeBody: a call without the token is refused while its body
// is still being sent, over HTTP/1.1 and h2c; the server does not wait for
// (or read) the body.
func TestAuthBeforeBody(t *testing.T) {
	e := newEnv(t)
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	const path = "/otafleet.v1.PackageService/CreatePackage"

	t.Run("http1", func(t *testing.T) {
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// 4 MiB announced (within the API's request limit), 1 KiB sent.
		fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/proto\r\nContent-Length: %d\r\n\r\n", path, u.Host, 4<<20)
		if _, err := conn.Write(make([]byte, 1024)); err != nil {
			t.Fatal(err)
		}
		// The deadline only bounds a failure: the answer comes at once.
		_ = conn.SetReadDeadline(clock.Real().Now().Add(10 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer while the body is unsent: %v", err)
		}
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusUnauthorized || !strings.Contains(string(b), "unauthenticated") {
			t.Errorf("answer %d %s, want 401 unauthenticated", res.StatusCode, b)
		}
	})

	t.Run("h2c", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pr, pw := io.Pipe()
		defer pw.Close()
		go func() { _, _ = pw.Write(make([]byte, 1024)) }() // and never the rest
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url+path, pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/proto")
		res, err := e.client("").Do(req)
		if err != nil {
			t.Fatalf("no answer while the body is unsent: %v", err)
		}
		defer res.Body.Close()
		if res.ProtoMajor != 2 || res.StatusCode != http.StatusUnauthorized {
			t.Errorf("answer %s %d, want HTTP/2 401", res.Proto, res.StatusCode)
		}
	})
}
