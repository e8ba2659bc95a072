package download

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
)

// keySize is the length of the key LoadOrCreateKey reads or creates.
const keySize = 32

// LoadOrCreateKey reads a 32-byte key from path (hex, one line) or, when the
// file does not exist, creates it with mode 0600 from crypto/rand. A file
// that exists but does not hold such a key is an error: replacing it would
// silently invalidate every token in flight.
func LoadOrCreateKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		key, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(key) != keySize {
			return nil, fmt.Errorf("download: %s does not hold a %d-byte key in hex (delete it to make a new one)", path, keySize)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("download: %w", err)
	}
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	if err := writeFileAtomic(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	return key, nil
}

// Names of the files LoadOrCreateCert keeps in its folder.
const (
	certFile = "download-cert.pem"
	keyFile  = "download-key.pem"
)

// certValidity is the lifetime of a created certificate.
const certValidity = 10 * 365 * 24 * time.Hour

// LoadOrCreateCert loads dir/download-cert.pem and dir/download-key.pem, or,
// when either is missing, creates a self-signed ECDSA P-256 certificate valid
// for hosts (IP addresses and DNS names; 127.0.0.1, ::1 and localhost when
// hosts is empty) for 10 years, writes both files atomically (the key with
// mode 0600, written first) and returns it. Devices verify the server by
// trusting that certificate itself. A loaded certificate is returned as it
// is, whatever its hosts: to change them, delete the two files.
func LoadOrCreateCert(dir string, hosts []string) (tls.Certificate, error) {
	certPath, keyPath := CertFiles(dir)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		cert, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("download: %w", err)
		}
		return cert, nil
	case certErr != nil && !errors.Is(certErr, os.ErrNotExist):
		return tls.Certificate{}, fmt.Errorf("download: %w", certErr)
	case keyErr != nil && !errors.Is(keyErr, os.ErrNotExist):
		return tls.Certificate{}, fmt.Errorf("download: %w", keyErr)
	}

	// One of them is missing (a first start, or a crash between the two
	// writes): make a new pair.
	certPEM, keyPEM, err := selfSigned(hosts, clock.Real().Now())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("download: %w", err)
	}
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, fmt.Errorf("download: %w", err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, fmt.Errorf("download: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("download: %w", err)
	}
	return cert, nil
}

// CertFiles are the paths of the certificate and key LoadOrCreateCert
// keeps in dir.
func CertFiles(dir string) (cert, key string) {
	return filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
}

// NewSelfSigned creates a self-signed server certificate as
// LoadOrCreateCert does (for hosts; 127.0.0.1, ::1 and localhost when
// empty; valid from an hour before now), and returns it and its key in
// PEM, without writing them anywhere: for a certificate kept elsewhere
// (the store of a cluster, which every node serves alike).
func NewSelfSigned(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	return selfSigned(hosts, now)
}

// selfSigned creates a self-signed server certificate for hosts, valid from
// an hour before now (clock skew) for certValidity, and returns it and its
// key in PEM.
func selfSigned(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "::1", "localhost"}
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"otafleet"}, CommonName: "otafleet package download"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// writeFileAtomic writes data to path with mode through a temporary file in
// the same folder and a rename, so that readers never see half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	// CreateTemp makes the file 0600, so a secret is never readable by
	// others, even for a moment.
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
