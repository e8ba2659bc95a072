package download_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/otafleet/otafleet/transport/download"
)

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %v, want %v", filepath.Base(path), got, want)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "download-token-key")
	k1, err := download.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != 32 {
		t.Fatalf("key of %d bytes, want 32", len(k1))
	}
	checkMode(t, path, 0o600)
	k2, err := download.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k1, k2) {
		t.Error("the second LoadOrCreateKey returned another key")
	}
	// The key works with New.
	if _, err := download.New(download.Config{Packages: newFixture(t).store, Key: k2}); err != nil {
		t.Error(err)
	}

	for _, bad := range []string{"", "zz\n", "0011\n"} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := download.LoadOrCreateKey(path); err == nil {
			t.Errorf("LoadOrCreateKey of a file holding %q succeeded", bad)
		}
	}
	if _, err := download.LoadOrCreateKey(filepath.Join(t.TempDir(), "no", "such", "dir", "key")); err == nil {
		t.Error("LoadOrCreateKey in a missing folder succeeded")
	}
}

func TestLoadOrCreateCert(t *testing.T) {
	dir := t.TempDir()
	c1, err := download.LoadOrCreateCert(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkMode(t, filepath.Join(dir, "download-key.pem"), 0o600)
	checkMode(t, filepath.Join(dir, "download-cert.pem"), 0o644)

	leaf, err := x509.ParseCertificate(c1.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < 10*365*24*time.Hour {
		t.Errorf("valid for %v, want 10 years", got)
	}
	if !slices.Equal(leaf.DNSNames, []string{"localhost"}) {
		t.Errorf("DNS names %q, want [localhost]", leaf.DNSNames)
	}
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || !leaf.IPAddresses[1].Equal(net.IPv6loopback) {
		t.Errorf("IP addresses %v, want [127.0.0.1 ::1]", leaf.IPAddresses)
	}
	for _, h := range []string{"127.0.0.1", "::1", "localhost"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("VerifyHostname(%s): %v", h, err)
		}
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		t.Errorf("extended key usages %v lack server auth", leaf.ExtKeyUsage)
	}

	// Loaded again, whatever the hosts asked.
	c2, err := download.LoadOrCreateCert(dir, []string{"other.example"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c1.Certificate[0], c2.Certificate[0]) {
		t.Error("the second LoadOrCreateCert created another certificate")
	}

	// A half-written pair (crash between the writes) is made again.
	if err := os.Remove(filepath.Join(dir, "download-cert.pem")); err != nil {
		t.Fatal(err)
	}
	c3, err := download.LoadOrCreateCert(dir, []string{"ota.example.com", "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	leaf3, err := x509.ParseCertificate(c3.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(c1.Certificate[0], c3.Certificate[0]) {
		t.Error("the certificate was not made again")
	}
	if !slices.Equal(leaf3.DNSNames, []string{"ota.example.com"}) || len(leaf3.IPAddresses) != 1 || !leaf3.IPAddresses[0].Equal(net.ParseIP("192.0.2.7")) {
		t.Errorf("hosts %q %v, want ota.example.com and 192.0.2.7", leaf3.DNSNames, leaf3.IPAddresses)
	}
	checkMode(t, filepath.Join(dir, "download-key.pem"), 0o600)
	c4, err := download.LoadOrCreateCert(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c3.Certificate[0], c4.Certificate[0]) {
		t.Error("the remade certificate was not reloaded")
	}

	// A pair that does not match is an error, not replaced.
	other := t.TempDir()
	if _, err := download.LoadOrCreateCert(other, nil); err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(other, "download-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "download-key.pem"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := download.LoadOrCreateCert(dir, nil); err == nil {
		t.Error("LoadOrCreateCert of a mismatched pair succeeded")
	}
}
