package descriptortest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TokenIssuer is a registry token server, as distribution's token auth
// (auth.token) trusts one: a root CA, whose PEM is the rootcertbundle file, and
// a signing certificate issued by it. Its tokens are compact JWS (ES256 or
// RS256) carrying the signing certificate in the x5c header, with
// distribution's claims (iss, sub, aud, exp, nbf, iat, jti, access).
type TokenIssuer struct {
	Algorithm string // "ES256" or "RS256"
	Issuer    string // the iss of its tokens (auth.token.issuer)
	Service   string // the aud of its tokens (auth.token.service)
	Realm     string // where a client would get tokens (auth.token.realm; nothing listens there)
	RootPath  string // the root CA certificate, PEM (auth.token.rootcertbundle)

	key    crypto.Signer
	signer []byte // the signing certificate, DER
}

// NewTokenIssuer returns an ES256 issuer with fresh keys; its root CA is
// written in the test's temporary directory.
func NewTokenIssuer(t testing.TB) *TokenIssuer {
	t.Helper()
	return newTokenIssuer(t, "ES256", func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) })
}

// NewRSATokenIssuer is NewTokenIssuer with RSA keys (2048 bits) and RS256.
func NewRSATokenIssuer(t testing.TB) *TokenIssuer {
	t.Helper()
	return newTokenIssuer(t, "RS256", func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 2048) })
}

// certificate is the template of a day-long certificate named name: a CA's when ca.
func certificate(t testing.TB, name string, ca bool) *x509.Certificate {
	now := time.Now()
	c := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	if ca {
		c.IsCA = true
		c.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	return c
}

func newTokenIssuer(t testing.TB, alg string, newKey func() (crypto.Signer, error)) *TokenIssuer {
	t.Helper()
	rootKey, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	key, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	root := certificate(t, "descriptortest token root CA", true)
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	if root, err = x509.ParseCertificate(rootDER); err != nil {
		t.Fatal(err)
	}
	leaf := certificate(t, "descriptortest token signer", false)
	signer, err := x509.CreateCertificate(rand.Reader, leaf, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "token-root.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &TokenIssuer{
		Algorithm: alg,
		Issuer:    "descriptortest-token-issuer",
		Service:   "descriptortest-registry",
		Realm:     "https://auth.descriptortest.invalid/token",
		RootPath:  path,
		key:       key,
		signer:    signer,
	}
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// AuthConfig is the auth.token section of a server that trusts the issuer:
//
//	cfg["auth"] = map[string]any{"token": issuer.AuthConfig()}
func (ti *TokenIssuer) AuthConfig() map[string]any {
	return map[string]any{
		"realm":             ti.Realm,
		"service":           ti.Service,
		"issuer":            ti.Issuer,
		"rootcertbundle":    ti.RootPath,
		"signingalgorithms": []string{ti.Algorithm},
	}
}

// Mint returns a token for subject that expires after lifetime and grants
// scopes, each "type:name:action[,action...]" as a registry's token server
// grants them ("repository:team/app:pull,push", "registry:descriptors:*"). A
// lifetime below -time.Minute gives a token distribution's leeway (60s) no
// longer accepts.
func (ti *TokenIssuer) Mint(subject string, lifetime time.Duration, scopes ...string) string {
	now := time.Now()
	header := map[string]any{
		"typ": "JWT",
		"alg": ti.Algorithm,
		"x5c": []string{base64.StdEncoding.EncodeToString(ti.signer)},
	}
	jti := make([]byte, 12)
	_, _ = rand.Read(jti)
	claims := map[string]any{
		"iss":    ti.Issuer,
		"sub":    subject,
		"aud":    ti.Service,
		"exp":    now.Add(lifetime).Unix(),
		"nbf":    now.Add(-10 * time.Second).Unix(),
		"iat":    now.Unix(),
		"jti":    base64.RawURLEncoding.EncodeToString(jti),
		"access": access(scopes),
	}
	input := part(header) + "." + part(claims)
	return input + "." + base64.RawURLEncoding.EncodeToString(ti.sign([]byte(input)))
}

// accessEntry is one grant of a token's access claim.
type accessEntry struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// access turns "type:name:actions" scopes into the access claim; the name is
// what lies between the first and the last colon.
func access(scopes []string) []accessEntry {
	out := make([]accessEntry, 0, len(scopes))
	for _, scope := range scopes {
		kind, rest, _ := strings.Cut(scope, ":")
		e := accessEntry{Type: kind, Name: rest, Actions: []string{}}
		if i := strings.LastIndexByte(rest, ':'); i >= 0 {
			e.Name = rest[:i]
			for _, a := range strings.Split(rest[i+1:], ",") {
				if a != "" {
					e.Actions = append(e.Actions, a)
				}
			}
		}
		out = append(out, e)
	}
	return out
}

func part(v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of strings, numbers and slices always marshal
	}
	return base64.RawURLEncoding.EncodeToString(data)
}

// sign is the JWS signature of input: PKCS#1 v1.5 for RS256; for ES256 the
// fixed-size r||s (32 bytes each), not the ASN.1 DER of crypto/ecdsa.SignASN1.
func (ti *TokenIssuer) sign(input []byte) []byte {
	sum := sha256.Sum256(input)
	switch key := ti.key.(type) {
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
		if err != nil {
			panic(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return sig
	case *rsa.PrivateKey:
		sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
		if err != nil {
			panic(err)
		}
		return sig
	}
	panic("descriptortest: unknown token key type")
}
