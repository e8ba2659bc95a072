package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport/download"
)

// The names of the secrets a store that nodes share keeps for them
// (persistence.SharedSecrets).
const (
	secretAPIToken    = "api-token"    // the API's bearer token, as text
	secretDownloadKey = "download-key" // the download tokens' HMAC key, 32 bytes
	secretDownloadTLS = "download-tls" // the self-signed download (and MQTTS) certificate and its key, PEM
)

// minTokenLen is the shortest API token serve takes.
const minTokenLen = 32

// secrets are the secrets a node serves with; in a cluster every node's
// are the same (see loadSecrets).
type secrets struct {
	token       string           // the API token
	downloadKey []byte           // the key download tokens are signed with
	cert        *tls.Certificate // the download server's and MQTTS's; nil when neither runs over TLS
}

// loadSecrets finds serve's secrets. The API token comes from
// --api-token-file when given; the certificate from --tls-cert and
// --tls-key when given. The others, and those two when not given, come
// from the store when it keeps secrets for a cluster (PostgreSQL): the
// first node to start creates each one, from what its data folder holds
// when it ran alone before (so its clients, devices and download tokens
// keep working), or anew; every other node reads it. With a store of one
// node (Pebble) they stay in the data folder, as they always were. The
// data folder's api-token always ends up holding the token the API takes,
// for the client verbs' --data-dir.
func loadSecrets(ctx context.Context, cfg serveConfig, store persistence.Store, logger *slog.Logger) (secrets, error) {
	var sec secrets
	shared, _ := store.(persistence.SharedSecrets)
	var err error
	if sec.token, err = loadAPIToken(ctx, cfg, shared, logger); err != nil {
		return sec, err
	}
	if sec.downloadKey, err = loadDownloadKey(ctx, cfg.DataDir, shared); err != nil {
		return sec, fmt.Errorf("download token key: %w", err)
	}
	if cfg.needCert() {
		c, err := loadCert(ctx, cfg, shared)
		if err != nil {
			return sec, err
		}
		sec.cert = &c
	}
	return sec, nil
}

// needCert reports whether a listener serves TLS with the download
// certificate: HTTPS downloads or MQTTS.
func (c serveConfig) needCert() bool {
	return (c.DownloadAddr != "" && c.DownloadTLS) || c.MQTTSAddr != ""
}

// loadAPIToken is the API token: from --api-token-file, the store's shared
// secret or the data folder (see loadSecrets).
func loadAPIToken(ctx context.Context, cfg serveConfig, shared persistence.SharedSecrets, logger *slog.Logger) (string, error) {
	path := filepath.Join(cfg.DataDir, "api-token")
	var tok string
	switch {
	case cfg.APITokenFile != "":
		b, err := readSecretFile("--api-token-file", cfg.APITokenFile, "it")
		if err != nil {
			return "", err
		}
		tok, _, _ = strings.Cut(string(b), "\n")
		if tok = strings.TrimSpace(tok); len(tok) < minTokenLen {
			return "", fmt.Errorf("--api-token-file: %s holds no token of at least %d characters on its first line (make one with: openssl rand -hex 32)", cfg.APITokenFile, minTokenLen)
		}
	case shared != nil:
		b, err := shared.SharedSecret(ctx, secretAPIToken, func() ([]byte, error) {
			if tok, ok := dataDirSecret(cfg.DataDir, secretAPIToken); ok {
				return tok, nil // the node ran alone before: its clients keep their token
			}
			return []byte(newToken()), nil
		})
		if err != nil {
			return "", fmt.Errorf("the API token in the store: %w", err)
		}
		if tok = string(b); len(tok) < minTokenLen {
			return "", fmt.Errorf("the API token in the store has %d characters, fewer than %d", len(tok), minTokenLen)
		}
	default:
		return apiToken(cfg.DataDir)
	}
	if old, err := readTokenFile(path); err == nil && old == tok {
		return tok, nil
	} else if err == nil {
		logger.Info("the data folder's api-token is replaced by the token the API takes now (from --api-token-file or the store)", "file", path)
	}
	if err := writeFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	return tok, nil
}

// readTokenFile reads a token file of the data folder: the token on its first
// line, of at least minTokenLen characters.
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok, _, _ := strings.Cut(string(b), "\n")
	if tok = strings.TrimSpace(tok); len(tok) < minTokenLen {
		return "", fmt.Errorf("%s holds no usable token (delete it to make a new one)", path)
	}
	return tok, nil
}

// newToken is a new random API token: 32 bytes in hex.
func newToken() string {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw) // crypto/rand.Read does not fail (Go 1.24)
	return hex.EncodeToString(raw)
}

// readSecretFile reads a file holding a secret (what names it in the error
// for a file others may read), named by flag: a regular file that group and
// others cannot access.
func readSecretFile(flag, path, what string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %s is not a regular file", flag, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s: %s has mode %04o: group and others must have no access to %s (chmod 600 %s)", flag, path, perm, what, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return b, nil
}

// loadDownloadKey is the key download tokens are signed with: the store's
// shared secret, or DIR/download-key.
func loadDownloadKey(ctx context.Context, dataDir string, shared persistence.SharedSecrets) ([]byte, error) {
	if shared == nil {
		return download.LoadOrCreateKey(filepath.Join(dataDir, "download-key"))
	}
	key, err := shared.SharedSecret(ctx, secretDownloadKey, func() ([]byte, error) {
		if key, ok := dataDirSecret(dataDir, secretDownloadKey); ok {
			return key, nil // the node ran alone before: its download tokens in flight stay valid
		}
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		return key, nil
	})
	if err != nil {
		return nil, fmt.Errorf("the store's: %w", err)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("the store's has %d bytes, want 32", len(key))
	}
	return key, nil
}

// loadCert is --tls-cert/--tls-key, or the self-signed certificate kept in
// the store (shared) or in the data folder.
func loadCert(ctx context.Context, cfg serveConfig, shared persistence.SharedSecrets) (tls.Certificate, error) {
	if cfg.TLSCert != "" {
		c, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return c, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		return c, nil
	}
	if shared == nil {
		c, err := download.LoadOrCreateCert(cfg.DataDir, nil)
		if err != nil {
			return c, fmt.Errorf("self-signed certificate: %w", err)
		}
		return c, nil
	}
	pair, err := shared.SharedSecret(ctx, secretDownloadTLS, func() ([]byte, error) {
		// Devices trust the self-signed certificate itself: a node that
		// ran alone before keeps its own, for them.
		if pair, ok := dataDirSecret(cfg.DataDir, secretDownloadTLS); ok {
			return pair, nil
		}
		certPEM, keyPEM, err := download.NewSelfSigned(nil, clock.Real().Now())
		if err != nil {
			return nil, err
		}
		return append(append(certPEM, '\n'), keyPEM...), nil
	})
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-signed certificate in the store: %w", err)
	}
	// Both PEM blocks in one value: X509KeyPair picks the certificates
	// from it, and the key.
	c, err := tls.X509KeyPair(pair, pair)
	if err != nil {
		return c, fmt.Errorf("self-signed certificate in the store: %w", err)
	}
	// The data folder keeps a copy, as when the node runs alone: otafleet
	// sim --data-dir trusts its download-cert.pem.
	if err := mirrorCert(cfg.DataDir, pair); err != nil {
		return c, fmt.Errorf("self-signed certificate: %w", err)
	}
	return c, nil
}

// mirrorCert writes the certificate and key of pair (PEM blocks) to the
// files LoadOrCreateCert keeps in dir, when they differ: the key first,
// with mode 0600.
func mirrorCert(dir string, pair []byte) error {
	var certPEM, keyPEM []byte
	for rest := pair; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if strings.HasSuffix(b.Type, "PRIVATE KEY") {
			keyPEM = append(keyPEM, pem.EncodeToMemory(b)...)
		} else {
			certPEM = append(certPEM, pem.EncodeToMemory(b)...)
		}
	}
	certPath, keyPath := download.CertFiles(dir)
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{keyPath, keyPEM, 0o600}, {certPath, certPEM, 0o644}} {
		if old, err := os.ReadFile(f.path); err == nil && bytes.Equal(old, f.data) {
			continue
		}
		if err := writeFileAtomic(f.path, f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// dataDirSecret reads the shared secret name from where a node alone keeps
// it in its data folder, as the store keeps it: the API token's text, the
// download key's 32 bytes, the certificate's PEM followed by its key's.
// It reports false when the folder does not hold a usable one.
func dataDirSecret(dir, name string) ([]byte, bool) {
	switch name {
	case secretAPIToken:
		tok, err := readTokenFile(filepath.Join(dir, "api-token"))
		return []byte(tok), err == nil
	case secretDownloadKey:
		b, err := os.ReadFile(filepath.Join(dir, "download-key"))
		if err != nil {
			return nil, false
		}
		key, err := hex.DecodeString(strings.TrimSpace(string(b)))
		return key, err == nil && len(key) == 32
	case secretDownloadTLS:
		certPath, keyPath := download.CertFiles(dir)
		certPEM, cerr := os.ReadFile(certPath)
		keyPEM, kerr := os.ReadFile(keyPath)
		if cerr != nil || kerr != nil {
			return nil, false
		}
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			return nil, false
		}
		return append(append(certPEM, '\n'), keyPEM...), true
	}
	return nil, false
}

// sharedSecretNames are the secrets a store keeps for a cluster.
var sharedSecretNames = []string{secretAPIToken, secretDownloadKey, secretDownloadTLS}
