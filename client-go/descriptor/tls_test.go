package descriptor_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/distribution/distribution/v3"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptortest"
)

// pki is a throw-away CA with a server certificate (descriptor.test, 127.0.0.1)
// and a client certificate, as PEM files.
type pki struct {
	ca, serverCert, serverKey, clientCert, clientKey string
	pool                                             *x509.CertPool
	client                                           tls.Certificate
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) (certPath, keyPath string, pair tls.Certificate) {
		k := key()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.DNSNames = []string{"descriptor.test"}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		certPath, keyPath = write(cn+".crt", "CERTIFICATE", der), write(cn+".key", "PRIVATE KEY", keyDER)
		pair, err = tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			t.Fatal(err)
		}
		return certPath, keyPath, pair
	}
	p := pki{ca: write("ca.crt", "CERTIFICATE", caDER), pool: x509.NewCertPool()}
	p.pool.AddCert(caCert)
	p.serverCert, p.serverKey, _ = leaf(2, "server", x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey, p.client = leaf(3, "client", x509.ExtKeyUsageClientAuth)
	return p
}

func TestTLS(t *testing.T) {
	p := newPKI(t)
	tlsOnly, _ := server(t, func(cfg descriptortest.Config) {
		descriptortest.Section(cfg, "grpc")["tls"] = map[string]any{"certificate": p.serverCert, "key": p.serverKey}
	})
	mutual, _ := server(t, func(cfg descriptortest.Config) {
		descriptortest.Section(cfg, "grpc")["tls"] = map[string]any{"certificate": p.serverCert, "key": p.serverKey, "clientcas": []string{p.ca}}
	})
	cases := []struct {
		name string
		srv  *descriptortest.Server
		opts []descriptor.Option
		ok   bool
	}{
		{"TLS with the CA", tlsOnly, []descriptor.Option{descriptor.WithTLSFiles(p.ca, "", "")}, true},
		{"TLS with the CA and a server name", tlsOnly, []descriptor.Option{descriptor.WithTLSFiles(p.ca, "", ""), descriptor.WithServerName("descriptor.test")}, true},
		{"TLS over a list of replicas", nil, []descriptor.Option{descriptor.WithTLSFiles(p.ca, "", "")}, true},
		{"TLS with a wrong server name", tlsOnly, []descriptor.Option{descriptor.WithTLSFiles(p.ca, "", ""), descriptor.WithServerName("other.test")}, false},
		{"TLS without the CA", tlsOnly, []descriptor.Option{descriptor.WithTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12})}, false},
		{"plaintext to a TLS server", tlsOnly, nil, false},
		{"mTLS with a client certificate from files", mutual, []descriptor.Option{descriptor.WithTLSFiles(p.ca, p.clientCert, p.clientKey)}, true},
		{"mTLS with a client certificate in a tls.Config", mutual, []descriptor.Option{descriptor.WithTLSConfig(&tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{p.client}, MinVersion: tls.VersionTLS12})}, true},
		{"mTLS without a client certificate", mutual, []descriptor.Option{descriptor.WithTLSFiles(p.ca, "", "")}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			target := tlsOnly.Target + "," + tlsOnly.Target
			if tc.srv != nil {
				target = tc.srv.Target
			}
			_, err := dial(t, target, tc.opts...).Stat(ctx, a256)
			if tc.ok {
				if !errors.Is(err, distribution.ErrBlobUnknown) {
					t.Fatalf("want an answer (BLOB_UNKNOWN), got %v", err)
				}
				return
			}
			var e *descriptor.Error
			if !errors.As(err, &e) || !e.Temporary() {
				t.Fatalf("want a failed connection (UNAVAILABLE), got %v", err)
			}
		})
	}
	if _, err := descriptor.New("", descriptor.WithTLSFiles(p.ca, p.clientCert, "")); err == nil {
		t.Fatal("a certificate without its key was accepted")
	}
}
