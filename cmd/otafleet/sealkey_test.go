package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/pgstore"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// sealServe runs `otafleet serve` on dataDir (API only) with extra flags.
// When the server starts, it runs fn with the API address and the token,
// then stops it with SIGTERM; it returns the log lines and the exit error.
func sealServe(t *testing.T, dataDir string, fn func(api, token string), extra ...string) ([]map[string]any, error) {
	t.Helper()
	args := []string{"--data-dir", dataDir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "", "--coap-addr", "", "--coaps-addr", "",
		"--download-addr", "", "--log-format", "json"}
	srv := startServer(t, append(args, extra...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var early []map[string]any
	for {
		select {
		case m, ok := <-srv.lines:
			if !ok {
				err := <-srv.exit
				return early, err
			}
			early = append(early, m)
			if m["msg"] != "serving" {
				continue
			}
			if fn != nil {
				b, err := os.ReadFile(filepath.Join(dataDir, "addrs.json"))
				var addrs map[string]string
				if err != nil || json.Unmarshal(b, &addrs) != nil {
					t.Fatalf("addrs.json: %s %v", b, err)
				}
				tok, err := os.ReadFile(filepath.Join(dataDir, "api-token"))
				if err != nil {
					t.Fatal(err)
				}
				fn("http://"+addrs["api"], strings.TrimSpace(string(tok)))
			}
			if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			err, rest := srv.wait(ctx)
			return append(early, rest...), err
		case <-ctx.Done():
			t.Fatal("the server neither served nor exited")
		}
	}
}

// logged reports whether a log line's msg (or, for a line that is not
// JSON, its text) contains s.
func logged(lines []map[string]any, s string) bool {
	for _, m := range lines {
		if txt, _ := m["msg"].(string); strings.Contains(txt, s) {
			return true
		}
		if txt, _ := m["text"].(string); strings.Contains(txt, s) {
			return true
		}
	}
	return false
}

// writeKey writes a seal key file with mode perm and returns its path.
func writeKey(t *testing.T, name string, content string, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

// wantStoreCredentials opens the store of dataDir with key (nil: none) and
// checks the devices' credentials, or the error wanted.
func wantStoreCredentials(t *testing.T, dataDir string, key []byte, wantErr error) {
	t.Helper()
	st, err := pebblestore.Open(filepath.Join(dataDir, "store"), pebblestore.Options{SealKey: key})
	if wantErr != nil {
		if !errors.Is(err, wantErr) {
			t.Fatalf("opening the store: %v, want %v", err, wantErr)
		}
		if err == nil {
			st.Close()
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if c, err := st.DeviceCredentials(ctx, "meter-1"); err != nil || c.Secret != "secret-of-meter-1" {
		t.Fatalf("meter-1: %+v %v", c, err)
	}
	if c, err := st.DeviceCredentials(ctx, "nb-1"); err != nil || string(c.PSK) != "psk-of-nb-1-0001" {
		t.Fatalf("nb-1: %+v %v", c, err)
	}
}

// TestServeSealKey: --seal-key-file. Without it serve warns (and about a
// data folder open to others) and the store keeps its own key; store/ is
// 0700. With it the store is re-sealed under the key file's key; a key file
// of the wrong size or readable by others is refused, as is a start without
// the key or with another one afterwards; --previous-seal-key-file rotates
// the key. The credentials stay readable throughout.
func TestServeSealKey(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	lines, err := sealServe(t, dataDir, func(api, token string) {
		ctx := context.Background()
		hc := h2cClient(token)
		products := otafleetv1connect.NewProductServiceClient(hc, api)
		devices := otafleetv1connect.NewDeviceServiceClient(hc, api)
		secret := "secret-of-meter-1"
		for _, c := range []struct {
			proto v1.Protocol
			dev   *v1.NewDevice
		}{
			{v1.Protocol_PROTOCOL_MQTT, &v1.NewDevice{DeviceId: "meter-1", Secret: &secret}},
			{v1.Protocol_PROTOCOL_LWM2M, &v1.NewDevice{DeviceId: "nb-1", Psk: []byte("psk-of-nb-1-0001")}},
		} {
			p, err := products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: c.dev.GetDeviceId(), Protocol: c.proto}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{
				ProductId: p.Msg.GetProduct().GetProductId(), Devices: []*v1.NewDevice{c.dev},
			})); err != nil {
				t.Fatal(err)
			}
		}
	})
	if err != nil {
		t.Fatalf("first start: %v", err)
	}
	if !logged(lines, "set --seal-key-file") || !logged(lines, "data folder is open to group or others") {
		t.Errorf("no warning about the seal key or the data folder's mode")
	}
	if st, err := os.Stat(filepath.Join(dataDir, "store")); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("store/: %v %v, want mode 0700", st.Mode(), err)
	}
	wantStoreCredentials(t, dataDir, nil, nil)

	keyA, keyB := strings.Repeat("a1", 32), strings.Repeat("b2", 32)
	rawA, _ := hex.DecodeString(keyA)
	rawB, _ := hex.DecodeString(keyB)
	for _, c := range []struct {
		name, content string
		perm          os.FileMode
		want          string
	}{
		{"readable by others", keyA + "\n", 0o644, "group and others must have no access to a seal key (chmod 600"},
		{"readable by the group", keyA + "\n", 0o640, "chmod 600"},
		{"too short", keyA[:62] + "\n", 0o600, "does not hold a 32-byte key as 64 hex digits"},
		{"not hex", strings.Repeat("zz", 32), 0o600, "does not hold a 32-byte key"},
	} {
		lines, err := sealServe(t, dataDir, nil, "--seal-key-file", writeKey(t, "bad.key", c.content, c.perm))
		if err == nil || !logged(lines, c.want) {
			t.Fatalf("key file %s: exit %v, want an error naming %q", c.name, err, c.want)
		}
	}
	wantStoreCredentials(t, dataDir, nil, nil) // untouched

	// The migration: the key comes from the environment here.
	fileA := writeKey(t, "a.key", keyA+"\n", 0o600)
	t.Setenv(envSealKeyFile, fileA)
	lines, err = sealServe(t, dataDir, nil)
	if err != nil || !logged(lines, "re-sealed") || logged(lines, "set --seal-key-file") {
		t.Fatalf("start with the key: %v (re-sealed logged: %v)", err, logged(lines, "re-sealed"))
	}
	t.Setenv(envSealKeyFile, "")
	wantStoreCredentials(t, dataDir, rawA, nil)
	wantStoreCredentials(t, dataDir, nil, pebblestore.ErrSealKey)

	// Without the key, or with another one, serve refuses to start.
	if lines, err := sealServe(t, dataDir, nil); err == nil || !logged(lines, "is sealed with a key kept outside it: start with --seal-key-file") || logged(lines, "pebblestore:") {
		t.Fatalf("start without the key: %v", err)
	}
	fileB := writeKey(t, "b.key", keyB, 0o600)
	if lines, err := sealServe(t, dataDir, nil, "--seal-key-file", fileB); err == nil || !logged(lines, "--seal-key-file is not the key the store in") || logged(lines, "Options.") {
		t.Fatalf("start with another key: %v", err)
	}
	if _, err := sealServe(t, dataDir, nil, "--previous-seal-key-file", fileA); err == nil {
		t.Fatal("--previous-seal-key-file without --seal-key-file: started")
	}
	fileC := writeKey(t, "c.key", strings.Repeat("c3", 32), 0o600)
	if lines, err := sealServe(t, dataDir, nil, "--seal-key-file", fileC, "--previous-seal-key-file", fileB); err == nil || !logged(lines, "neither --seal-key-file nor --previous-seal-key-file is the key") {
		t.Fatalf("start with two other keys: %v", err)
	}

	// Rotation from A to B, and restarts with the flags still set.
	for i := range 2 {
		if _, err := sealServe(t, dataDir, nil, "--seal-key-file", fileB, "--previous-seal-key-file", fileA); err != nil {
			t.Fatalf("rotation, start %d: %v", i, err)
		}
		wantStoreCredentials(t, dataDir, rawB, nil)
		wantStoreCredentials(t, dataDir, rawA, pebblestore.ErrSealKey)
	}
}

// TestServeSealKeyPostgres: --previous-seal-key-file rotates the seal key
// of a PostgreSQL store as it does a Pebble store's: serve re-seals at
// start; afterwards only the new key opens the store, the flags may stay,
// and two wrong keys stop serve with one line.
func TestServeSealKeyPostgres(t *testing.T) {
	t.Setenv(envSealKeyFile, "")
	dsn := pgtest.NewDatabase(t)
	keyA, keyB := strings.Repeat("a1", 32), strings.Repeat("b2", 32)
	rawA, _ := hex.DecodeString(keyA)
	rawB, _ := hex.DecodeString(keyB)
	fileA, fileB := writeKey(t, "a.key", keyA+"\n", 0o600), writeKey(t, "b.key", keyB+"\n", 0o600)
	fileC := writeKey(t, "c.key", strings.Repeat("c3", 32), 0o600)
	dataDir := func() string {
		d := filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return d
	}
	_, err := sealServe(t, dataDir(), func(api, token string) {
		ctx := context.Background()
		hc := h2cClient(token)
		products := otafleetv1connect.NewProductServiceClient(hc, api)
		devices := otafleetv1connect.NewDeviceServiceClient(hc, api)
		secret := "secret-of-meter-1"
		for _, c := range []struct {
			proto v1.Protocol
			dev   *v1.NewDevice
		}{
			{v1.Protocol_PROTOCOL_MQTT, &v1.NewDevice{DeviceId: "meter-1", Secret: &secret}},
			{v1.Protocol_PROTOCOL_LWM2M, &v1.NewDevice{DeviceId: "nb-1", Psk: []byte("psk-of-nb-1-0001")}},
		} {
			p, err := products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: c.dev.GetDeviceId(), Protocol: c.proto}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{
				ProductId: p.Msg.GetProduct().GetProductId(), Devices: []*v1.NewDevice{c.dev},
			})); err != nil {
				t.Fatal(err)
			}
		}
	}, "--store", dsn, "--seal-key-file", fileA)
	if err != nil {
		t.Fatalf("first start: %v", err)
	}
	credentials := func(key []byte) error {
		t.Helper()
		st, err := pgstore.Open(context.Background(), dsn, pgstore.Options{SealKey: key})
		if err != nil {
			return err
		}
		defer st.Close()
		ctx := context.Background()
		if c, err := st.DeviceCredentials(ctx, "meter-1"); err != nil || c.Secret != "secret-of-meter-1" {
			t.Fatalf("meter-1: %+v %v", c, err)
		}
		if c, err := st.DeviceCredentials(ctx, "nb-1"); err != nil || string(c.PSK) != "psk-of-nb-1-0001" {
			t.Fatalf("nb-1: %+v %v", c, err)
		}
		return nil
	}
	failServe(t, "neither --seal-key-file nor --previous-seal-key-file is the key the store is sealed with",
		serveArgs(dataDir(), "--store", dsn, "--seal-key-file", fileC, "--previous-seal-key-file", fileB)...)
	failServe(t, "--seal-key-file is not the key the store is sealed with (to change keys, give the old key file as --previous-seal-key-file)", serveArgs(dataDir(), "--store", dsn, "--seal-key-file", fileB)...)
	if err := credentials(rawA); err != nil {
		t.Fatalf("the store after refused starts: %v", err)
	}
	for i := range 2 {
		lines, err := sealServe(t, dataDir(), nil, "--store", dsn, "--seal-key-file", fileB, "--previous-seal-key-file", fileA)
		if err != nil {
			t.Fatalf("rotation, start %d: %v", i, err)
		}
		if logged(lines, "re-sealed") != (i == 0) || logged(lines, "Options.") {
			t.Errorf("start %d: re-sealed logged %v", i, logged(lines, "re-sealed"))
		}
		if err := credentials(rawB); err != nil {
			t.Fatal(err)
		}
		if err := credentials(rawA); !errors.Is(err, pgstore.ErrSealKey) {
			t.Fatalf("the old key after the rotation: %v, want ErrSealKey", err)
		}
	}
}
