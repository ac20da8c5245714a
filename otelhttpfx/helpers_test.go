package otelhttpfx_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// collect returns the metrics reader has, by name.
func collect(t testing.TB, reader sdkmetric.Reader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return byName(rm)
}

// byName returns the metrics of rm by name.
func byName(rm metricdata.ResourceMetrics) map[string]metricdata.Metrics {
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// attrs renders a set as "k=v,k=v" in key order, for comparisons and messages.
func attrs(s attribute.Set) string {
	out := ""
	for i, kv := range s.ToSlice() {
		if i > 0 {
			out += ","
		}
		out += string(kv.Key) + "=" + kv.Value.Emit()
	}
	return out
}

// flushReader is a ManualReader that also collects when the provider is flushed, as a
// periodic reader exports then, and keeps what it collected last.
type flushReader struct {
	*sdkmetric.ManualReader

	mu      sync.Mutex
	flushes int
	flushed metricdata.ResourceMetrics
}

func newFlushReader() *flushReader { return &flushReader{ManualReader: sdkmetric.NewManualReader()} }

// ForceFlush implements sdkmetric.Reader: it collects, as an exporting reader would.
func (r *flushReader) ForceFlush(ctx context.Context) error {
	var rm metricdata.ResourceMetrics
	if err := r.Collect(ctx, &rm); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushes++
	r.flushed = rm
	return nil
}

// lastFlush returns the number of flushes and the metrics of the last, by name.
func (r *flushReader) lastFlush() (int, map[string]metricdata.Metrics) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flushes, byName(r.flushed)
}

// countingProvider is a meter provider that counts the callbacks registered with its meters
// and unregistered.
type countingProvider struct {
	metric.MeterProvider
	registered, unregistered atomic.Int64
}

func (p *countingProvider) Meter(name string, opts ...metric.MeterOption) metric.Meter {
	return countingMeter{Meter: p.MeterProvider.Meter(name, opts...), p: p}
}

// live is the number of callbacks registered and not unregistered.
func (p *countingProvider) live() int64 { return p.registered.Load() - p.unregistered.Load() }

type countingMeter struct {
	metric.Meter
	p *countingProvider
}

func (m countingMeter) RegisterCallback(f metric.Callback, insts ...metric.Observable) (metric.Registration, error) {
	reg, err := m.Meter.RegisterCallback(f, insts...)
	if err != nil {
		return nil, err
	}
	m.p.registered.Add(1)
	return &countingRegistration{Registration: reg, p: m.p}, nil
}

type countingRegistration struct {
	metric.Registration
	p    *countingProvider
	once sync.Once
}

func (r *countingRegistration) Unregister() error {
	r.once.Do(func() { r.p.unregistered.Add(1) })
	return r.Registration.Unregister()
}

// clientCert writes a self-signed client certificate and its key to files in a temporary
// directory, and returns their names and when the certificate expires.
func clientCert(t testing.TB) (certFile, keyFile string, notAfter time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	notAfter = time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second).UTC()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "httpfx test client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, notAfter
}

// certPEM is the PEM text of a test server's certificate, for Config.TLSCAPEM.
func certPEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// resetFirst returns a handler that resets the connection of its first request, before any
// response, and answers "ok" to the others: the first attempt fails, a retry passes.
func resetFirst(t testing.TB) http.Handler {
	var calls atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) > 1 {
			w.Write([]byte("ok"))
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not a clean close
		}
		conn.Close()
	})
}
