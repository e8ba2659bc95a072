package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/internal/pgtest"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
	"github.com/otafleet/otafleet/transport/download"
)

// TestSharedSecretsTwoServes: two serve processes on one PostgreSQL store
// (with their own data folders) take the same API token and serve the
// same download certificate: the first created them in the store, from
// what its data folder held; the second found them there. Each data
// folder's api-token and download-cert.pem hold them, for the client
// verbs and otafleet sim.
func TestSharedSecretsTwoServes(t *testing.T) {
	t.Setenv(envSealKeyFile, "")
	dsn := pgtest.NewDatabase(t)
	key := writeKey(t, "k", strings.Repeat("c3", 32)+"\n", 0o600)
	dirs := []string{filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// Node a ran alone before: its clients hold this token.
	old := strings.Repeat("ab", 32)
	if err := os.WriteFile(filepath.Join(dirs[0], "api-token"), []byte(old+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	apis := make([]string, len(dirs))
	for i, d := range dirs {
		srv := startServer(t, "--data-dir", d, "--store", dsn, "--seal-key-file", key, "--api-addr", "127.0.0.1:0",
			"--mqtt-addr", "", "--coap-addr", "", "--coaps-addr", "", "--download-addr", "127.0.0.1:0", "--log-format", "json")
		srv.await(ctx, "serving", func(m map[string]any) bool { return m["msg"] == "serving" })
		b, err := os.ReadFile(filepath.Join(d, "addrs.json"))
		var addrs map[string]string
		if err != nil || json.Unmarshal(b, &addrs) != nil {
			t.Fatalf("addrs.json: %s %v", b, err)
		}
		apis[i] = "http://" + addrs["api"]
	}
	for i, d := range dirs {
		if tok := readToken(t, d); tok != old {
			t.Errorf("node %d's api-token %q, want the token node a had alone, %q", i, tok, old)
		}
		// Node a's token opens node b's API, and the other way round.
		products := otafleetv1connect.NewProductServiceClient(h2cClient(old), apis[i])
		if _, err := products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "meter", Protocol: v1.Protocol_PROTOCOL_MQTT})); err != nil {
			t.Errorf("node %d with the shared token: %v", i, err)
		}
	}
	certs := make([][]byte, len(dirs))
	for i, d := range dirs {
		p, _ := download.CertFiles(d)
		var err error
		if certs[i], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(certs[0], certs[1]) || !bytes.Contains(certs[0], []byte("BEGIN CERTIFICATE")) {
		t.Errorf("the nodes' download certificates differ:\n%s\n%s", certs[0], certs[1])
	}
}

// TestSharedSecretsTwoOpens: nodes starting at once on one PostgreSQL store
// get one set of secrets, and a download token (and a handle of an LwM2M
// Package URI) that one node's download server makes, another node's
// accepts. With --api-token-file the token is the file's, whatever the
// store holds, and a file that others may read is refused.
func TestSharedSecretsTwoOpens(t *testing.T) {
	t.Setenv(envSealKeyFile, "")
	dsn := pgtest.NewDatabase(t)
	keyFile := writeKey(t, "k", strings.Repeat("c3", 32)+"\n", 0o600)
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	const nodes = 3
	secs := make([]secrets, nodes)
	stores := make([]servedStore, nodes)
	dirs := make([]string, nodes)
	errs := make([]error, nodes)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			cfg := defaultServeConfig()
			cfg.DataDir, cfg.Store, cfg.SealKeyFile = dirs[i], dsn, keyFile
			store, _, err := openStore(ctx, cfg, logger)
			if err != nil {
				errs[i] = err
				return
			}
			t.Cleanup(func() { _ = store.Close() })
			stores[i] = store
			secs[i], errs[i] = loadSecrets(ctx, cfg, store, logger)
		})
	}
	wg.Wait()
	for i := range nodes {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		s := secs[i]
		if readToken(t, dirs[i]) != s.token {
			t.Errorf("node %d's data folder holds another token than its API's", i)
		}
		if s.token != secs[0].token || !bytes.Equal(s.downloadKey, secs[0].downloadKey) || s.cert == nil || !bytes.Equal(s.cert.Certificate[0], secs[0].cert.Certificate[0]) {
			t.Fatalf("node %d's secrets differ from node 0's", i)
		}
	}
	if len(secs[0].token) != 64 || len(secs[0].downloadKey) != 32 {
		t.Fatalf("token %q, download key of %d bytes", secs[0].token, len(secs[0].downloadKey))
	}
	servers := make([]*download.Server, nodes)
	for i := range nodes {
		var err error
		if servers[i], err = download.New(download.Config{Packages: stores[i], Handles: stores[i], Key: secs[i].downloadKey}); err != nil {
			t.Fatal(err)
		}
	}
	g := download.Grant{TaskID: "t1", DeviceID: "d1", PackageID: "pkg1", Attempt: 1}
	tok, _ := servers[0].Mint(g)
	if got, err := servers[2].Check(ctx, tok, "pkg1"); err != nil || got != g {
		t.Fatalf("node 2 checks node 0's download token: %+v, %v; want %+v", got, err, g)
	}
	h, err := servers[1].Handle(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := servers[2].Check(ctx, h, "pkg1"); err != nil || got != g {
		t.Fatalf("node 2 checks node 1's handle: %+v, %v; want %+v", got, err, g)
	}
	other, err := download.New(download.Config{Packages: stores[0], Key: bytes.Repeat([]byte{9}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Check(ctx, tok, "pkg1"); err == nil {
		t.Fatal("a server with another key accepted the token: the check proves nothing")
	}

	// --api-token-file wins over the store.
	cfg := defaultServeConfig()
	cfg.DataDir, cfg.Store, cfg.SealKeyFile = t.TempDir(), dsn, keyFile
	fileTok := strings.Repeat("7e", 20)
	cfg.APITokenFile = writeKey(t, "token", fileTok+"\n", 0o600)
	sec, err := loadSecrets(ctx, cfg, stores[0], logger)
	if err != nil || sec.token != fileTok || readToken(t, cfg.DataDir) != fileTok || !bytes.Equal(sec.downloadKey, secs[0].downloadKey) {
		t.Fatalf("--api-token-file: token %q, %v; want the file's, and the store's download key", sec.token, err)
	}
	for _, c := range []struct {
		content string
		mode    os.FileMode
		want    string
	}{
		{fileTok + "\n", 0o644, "group and others must have no access"},
		{"short\n", 0o600, "holds no token of at least 32 characters"},
	} {
		cfg.APITokenFile = writeKey(t, "token", c.content, c.mode)
		if _, err := loadSecrets(ctx, cfg, stores[0], logger); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--api-token-file of mode %04o holding %q: %v, want %q", c.mode, c.content, err, c.want)
		}
	}
}
