package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// This file is the child process: the loopback upstream the clients are measured against.
// It runs in its own process so that its CPU time and allocations are not charged to the
// client under test. The parent starts it as "bench -serve"; the child prints one JSON line
// (serverInfo) on stdout and serves until its stdin is closed, which happens when the parent
// stops it or dies.

// serveFlag is the hidden first argument that turns the binary into the child server.
const serveFlag = "-serve"

// maxDelay bounds the delay a request may ask for.
const maxDelay = time.Second

// responseBody is what every data request gets: about 100 bytes.
var responseBody = []byte(strings.Repeat("httpfx bench response body; ", 3) + "0123456789abcdef\n")

// serverInfo is the line the child prints on stdout once it listens.
type serverInfo struct {
	Addrs   map[string]string `json:"addrs"`    // mode name → host:port of its data listener
	Control string            `json:"control"`  // host:port of the control listener (GET /stats)
	CertPEM string            `json:"cert_pem"` // the self-signed certificate of the TLS modes
}

// serverStats is the JSON of GET /stats on the control listener. Counters only grow, so the
// parent computes per-cell deltas, except ConnsOpen, which is a current value.
type serverStats struct {
	ConnsNew  map[string]int64 `json:"conns_new"`  // connections accepted per mode (ConnState StateNew)
	ConnsOpen map[string]int64 `json:"conns_open"` // connections open now per mode
	Requests  map[string]int64 `json:"requests"`   // data requests served per mode
	CPU       time.Duration    `json:"cpu_ns"`     // user + system CPU time of the child (getrusage RUSAGE_SELF)
	LogLines  int64            `json:"log_lines"`  // lines net/http logged (TLS handshake errors and the like)
}

// modeCounters counts one data server's connections and requests. Safe for concurrent use.
type modeCounters struct {
	opened, closed, requests atomic.Int64
}

func (c *modeCounters) track(_ net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		c.opened.Add(1)
	case http.StateClosed, http.StateHijacked:
		c.closed.Add(1)
	}
}

// lineCounter is the servers' ErrorLog sink: it counts lines and keeps the first few on the
// child's stderr, so that a storm of handshake errors is visible but does not flood.
type lineCounter struct {
	n atomic.Int64
}

func (l *lineCounter) Write(p []byte) (int, error) {
	lines := int64(bytes.Count(p, []byte("\n")))
	if l.n.Add(lines) <= 5 {
		os.Stderr.Write(append([]byte("bench server: "), p...))
	}
	return len(p), nil
}

// serveMain runs the child until its stdin reaches EOF and returns the exit code.
func serveMain() int {
	if err := serve(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench server:", err)
		return 1
	}
	return 0
}

// serve starts one data server per mode and the control server, writes the serverInfo line
// to out, and serves until in reaches EOF (or fails). It then closes every server and waits
// for their goroutines.
func serve(in io.Reader, out io.Writer) error {
	// Ctrl-C in a terminal reaches the whole process group; the parent handles it and then
	// closes our stdin, which stops us in order.
	signal.Ignore(os.Interrupt)

	cert, certPEM, err := selfSignedCert()
	if err != nil {
		return err
	}
	logSink := new(lineCounter)
	errorLog := log.New(logSink, "", 0)

	var (
		wg       sync.WaitGroup
		servers  []*http.Server
		counters = make(map[string]*modeCounters)
		info     = serverInfo{Addrs: make(map[string]string), CertPEM: string(certPEM)}
		serveErr = make(chan error, len(modes())+1)
	)
	defer func() {
		for _, s := range servers {
			s.Close()
		}
		wg.Wait()
	}()
	start := func(s *http.Server, ln net.Listener, tlsOn bool) {
		servers = append(servers, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if tlsOn {
				err = s.ServeTLS(ln, "", "")
			} else {
				err = s.Serve(ln)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				serveErr <- err
			}
		}()
	}

	for _, m := range modes() {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("listen for %s: %w", m.name, err)
		}
		c := new(modeCounters)
		counters[m.name] = c
		s := &http.Server{
			Handler:           dataHandler(&c.requests),
			ConnState:         c.track,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          errorLog,
		}
		if m.tls {
			s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			s.Protocols = new(http.Protocols)
			s.Protocols.SetHTTP1(true)
			s.Protocols.SetHTTP2(m.h2)
		}
		info.Addrs[m.name] = ln.Addr().String()
		start(s, ln, m.tls)
	}

	ctl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for control: %w", err)
	}
	info.Control = ctl.Addr().String()
	start(&http.Server{
		Handler:           controlHandler(counters, logSink),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          errorLog,
	}, ctl, false)

	line, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("encode server info: %w", err)
	}
	if _, err := fmt.Fprintf(out, "%s\n", line); err != nil {
		return fmt.Errorf("write server info: %w", err)
	}

	// Serve until stdin ends. The reader goroutine ends at EOF or on a read error; if a
	// server fails first we return, the deferred close runs, and the process exits, which
	// ends the reader too (a blocking read on a pipe cannot be interrupted).
	stdinDone := make(chan struct{})
	go func() {
		defer close(stdinDone)
		io.Copy(io.Discard, bufio.NewReader(in))
	}()
	select {
	case <-stdinDone:
		return nil
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
}

// dataHandler answers every request with responseBody, after the delay named by a path of
// the form /sleep/<duration> (e.g. /sleep/5ms); any other path answers at once.
func dataHandler(requests *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if rest, ok := strings.CutPrefix(r.URL.Path, "/sleep/"); ok {
			d, err := time.ParseDuration(rest)
			if err != nil || d < 0 || d > maxDelay {
				http.Error(w, "bad delay", http.StatusBadRequest)
				return
			}
			time.Sleep(d)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(responseBody)
	})
}

// controlHandler serves GET /stats: the counters of every mode and the child's CPU time.
func controlHandler(counters map[string]*modeCounters, logSink *lineCounter) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		st := serverStats{
			ConnsNew:  make(map[string]int64),
			ConnsOpen: make(map[string]int64),
			Requests:  make(map[string]int64),
			LogLines:  logSink.n.Load(),
		}
		for name, c := range counters {
			opened := c.opened.Load()
			st.ConnsNew[name] = opened
			st.ConnsOpen[name] = opened - c.closed.Load()
			st.Requests[name] = c.requests.Load()
		}
		cpu, err := selfCPU()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		st.CPU = cpu
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
	})
	return mux
}

// selfCPU is the user plus system CPU time this process has used.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// selfSignedCert makes an ECDSA P-256 certificate for 127.0.0.1, ::1 and localhost, valid for
// a day, that is its own CA, so a client trusts it by adding it to RootCAs.
func selfSignedCert() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "httpfx bench loopback"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("create certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("marshal key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("key pair: %w", err)
	}
	return cert, certPEM, nil
}
