package httpfxtest

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
)

// certs is the test CA of an Env, which the app's transport trusts, and the server
// certificates it issues, one per name the clients ask for. It is safe for concurrent use.
type certs struct {
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	key   *ecdsa.PrivateKey // of every server certificate

	mu     sync.Mutex
	byName map[string]*tlsCert // by SNI name, or by IP list for clients that send none
}

// tlsCert is a server certificate, issued once.
type tlsCert struct {
	once sync.Once
	cert *tls.Certificate
	err  error
}

func newCerts() (*certs, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("test CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("test CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "httpfxtest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("test CA: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("test CA: %w", err)
	}
	return &certs{ca: ca, caKey: caKey, key: key, byName: make(map[string]*tlsCert)}, nil
}

// issue returns the server certificate for the DNS name or IP addresses, issuing it once.
func (c *certs) issue(name string, ips []net.IP) (*tls.Certificate, error) {
	id := name
	if name == "" {
		for _, ip := range ips {
			id += ip.String() + ","
		}
	}
	c.mu.Lock()
	tc := c.byName[id]
	if tc == nil {
		tc = new(tlsCert)
		c.byName[id] = tc
	}
	c.mu.Unlock()
	tc.once.Do(func() {
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
		if err != nil {
			tc.err = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial,
			Subject:      pkix.Name{CommonName: cmp.Or(name, "httpfxtest server")},
			NotBefore:    c.ca.NotBefore,
			NotAfter:     c.ca.NotAfter,
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IPAddresses:  ips,
		}
		if name != "" {
			tmpl.DNSNames = []string{name}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, c.key.Public(), c.caKey)
		if err != nil {
			tc.err = err
			return
		}
		tc.cert = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: c.key}
	})
	return tc.cert, tc.err
}

// tlsConfig is the GetConfigForClient of every https server of e: it presents a certificate
// for the name the client asks for, or, to a client that sends no name (an IP address), for
// the routed IP addresses and loopback.
func (e *Env) tlsConfig(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	var ips []net.IP
	if hello.ServerName == "" {
		ips = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		e.mu.Lock()
		for addr := range e.addrs {
			host, _, _ := net.SplitHostPort(addr)
			if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() {
				ips = append(ips, ip)
			}
		}
		e.mu.Unlock()
		slices.SortFunc(ips, func(a, b net.IP) int { return strings.Compare(a.String(), b.String()) })
	}
	cert, err := e.certs.issue(hello.ServerName, ips)
	if err != nil {
		return nil, fmt.Errorf("httpfxtest: test certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: nextProtos()}, nil
}

// nextProtos are the protocols the https servers offer, as most real servers do.
func nextProtos() []string { return []string{"h2", "http/1.1"} }
