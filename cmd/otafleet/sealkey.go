package main

import (
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// envSealKeyFile names --seal-key-file when the flag is not given.
const envSealKeyFile = "OTAFLEET_SEAL_KEY_FILE"

// sealKeySize is the seal key's length: AES-256.
const sealKeySize = 32

// readSealKey reads a seal key file (of the flag named flag): the 32-byte
// key as 64 hex digits, surrounding whitespace allowed, e.g. made with
// `(umask 077; openssl rand -hex 32 > FILE)`. A file that group or others
// may access is refused: the key opens every device's secret and PSK.
func readSealKey(flag, path string) ([]byte, error) {
	b, err := readSecretFile(flag, path, "a seal key")
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != sealKeySize {
		return nil, fmt.Errorf("%s: %s does not hold a %d-byte key as %d hex digits (make one with: openssl rand -hex %d)", flag, path, sealKeySize, 2*sealKeySize, sealKeySize)
	}
	return key, nil
}

// sealKeys reads --seal-key-file and --previous-seal-key-file (nil when
// not set).
func (c serveConfig) sealKeys() (key, previous []byte, err error) {
	if c.SealKeyFile != "" {
		if key, err = readSealKey("--seal-key-file", c.SealKeyFile); err != nil {
			return nil, nil, err
		}
	}
	if c.PreviousSealKeyFile != "" {
		if previous, err = readSealKey("--previous-seal-key-file", c.PreviousSealKeyFile); err != nil {
			return nil, nil, err
		}
	}
	return key, previous, nil
}

// prepareStoreDir makes DIR/store with mode 0700 (and tightens an existing
// one), and warns when the data folder lets group or others in.
func prepareStoreDir(dataDir string, logger *slog.Logger) (string, error) {
	st, err := os.Stat(dataDir)
	if err != nil {
		return "", fmt.Errorf("data dir: %w", err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		logger.Warn("the data folder is open to group or others; it holds the API token and the store (chmod 700 it)",
			"data_dir", dataDir, "mode", fmt.Sprintf("%04o", perm))
	}
	dir := filepath.Join(dataDir, "store")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("store dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("store dir: %w", err)
	}
	return dir, nil
}
