// Command example runs a self-contained demo of httpfx on loopback, no internet needed.
//
// An upstream "square" service answers /square?n=7 with 49 after a short delay, standing in
// for a real backend. A "sum of squares" service, an fx app with httpfx.Module, answers
// /sum?n=100 by fanning out 100 concurrent calls to the upstream through the one shared
// client. The demo sends batches of calls, prints the results and the connection figures
// (upstream requests against connections opened), then stops the app while calls are still in
// flight and shows that none was lost: the service's server stops first and waits for its
// handlers, whose upstream calls the client then drains.
//
//	go run ./example
//
// The same kind of demo with Prometheus metrics, served on /metrics with a flag, is in the
// promhttpfx module (which this module cannot import without requiring Prometheus):
//
//	cd promhttpfx && go run ./example -metrics 127.0.0.1:9464
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/httpfx/httpfx"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const (
	fanOut        = 100                  // upstream calls per service request
	fanOutLimit   = 16                   // concurrent upstream calls per service request
	callers       = 8                    // concurrent service requests
	batches       = 5                    // service requests per caller before the stop
	upstreamDelay = 2 * time.Millisecond // the upstream's work per call
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run(out io.Writer) error {
	upstream, stopUpstream, err := startUpstream()
	if err != nil {
		return err
	}
	defer stopUpstream()

	var svc *service
	var stats *httpfx.Stats
	app := fx.New(
		fx.NopLogger,
		fx.Supply(newLogger(out), upstreamURL("http://"+upstream.Addr)),
		httpfx.Module,
		fx.Provide(newService),
		fx.Populate(&svc, &stats),
	)
	if err := app.Start(context.Background()); err != nil {
		return err
	}
	fmt.Fprintf(out, "squares service on %s, upstream on %s\n", svc.addr, upstream.Addr)

	// Callers outside the app, each with a client of its own (they stand for other processes).
	caller := &http.Client{Transport: &http.Transport{}}
	defer caller.CloseIdleConnections()
	want := strconv.Itoa(fanOut * (fanOut + 1) * (2*fanOut + 1) / 6)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range batches {
				if got, err := call(caller, svc.addr); err != nil || got != want {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	s := stats.Snapshot()
	fmt.Fprintf(out, "sum of squares 1..%d = %s, %d times, %d failed\n", fanOut, want, callers*batches, failed.Load())
	fmt.Fprintf(out, "upstream: %d requests over %d connections opened (reuse ratio %.3f)\n",
		s.Requests, s.ConnsOpened, s.ReuseRatio())

	// Stop while service requests, and so upstream calls, are in flight.
	results := make(chan error, callers)
	for range callers {
		go func() {
			got, err := call(caller, svc.addr)
			if err == nil && got != want {
				err = fmt.Errorf("got %s, want %s", got, want)
			}
			results <- err
		}()
	}
	for svc.active.Load() < callers { // wait until the service is handling all of them
		time.Sleep(time.Millisecond)
	}
	inFlight := stats.Snapshot().InFlight
	fmt.Fprintf(out, "stopping with %d service requests and %d upstream calls in flight\n", svc.active.Load(), inFlight)
	stopErr := app.Stop(context.Background())
	completed, lost := 0, 0
	for range callers {
		if err := <-results; err != nil {
			lost++
		} else {
			completed++
		}
	}
	s = stats.Snapshot()
	fmt.Fprintf(out, "stopped: %d sent, %d completed, %d lost; httpfx cut %d, %d connections open\n",
		callers, completed, lost, s.Cut, s.ConnsOpen)
	_, err = svc.client.Get("http://" + upstream.Addr + "/square?n=2")
	fmt.Fprintf(out, "a call after stop: %v (errors.Is ErrClosed: %v)\n", err, errors.Is(err, httpfx.ErrClosed))
	if stopErr != nil || lost > 0 || failed.Load() > 0 {
		return fmt.Errorf("requests lost or failed (stop: %v)", stopErr)
	}
	return nil
}

// upstreamURL is the base URL of the square service.
type upstreamURL string

// service is the sum-of-squares HTTP server: an fx component that depends on the client.
type service struct {
	addr   string
	client *http.Client
	base   upstreamURL
	active atomic.Int64 // requests being handled
}

func newService(lc fx.Lifecycle, client *http.Client, base upstreamURL) (*service, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &service{addr: ln.Addr().String(), client: client, base: base}
	srv := &http.Server{Handler: http.HandlerFunc(s.sum), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			go func() { defer close(done); srv.Serve(ln) }()
			return nil
		},
		OnStop: func(ctx context.Context) error {
			err := srv.Shutdown(ctx) // waits for handlers, which still use the client
			<-done
			return err
		},
	})
	return s, nil
}

// sum answers /sum?n=N with the sum of the squares of 1..N, asking the upstream for each.
func (s *service) sum(w http.ResponseWriter, r *http.Request) {
	s.active.Add(1)
	defer s.active.Add(-1)
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n < 1 || n > 1000 {
		http.Error(w, "n: want 1..1000", http.StatusBadRequest)
		return
	}
	var total atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	limit := make(chan struct{}, fanOutLimit)
	for i := 1; i <= n; i++ {
		wg.Add(1)
		limit <- struct{}{}
		go func() {
			defer func() { <-limit; wg.Done() }()
			v, err := s.square(r.Context(), i)
			if err != nil {
				mu.Lock()
				firstErr = errors.Join(firstErr, err)
				mu.Unlock()
				return
			}
			total.Add(v)
		}()
	}
	wg.Wait()
	if firstErr != nil {
		http.Error(w, firstErr.Error(), http.StatusBadGateway)
		return
	}
	io.WriteString(w, strconv.FormatInt(total.Load(), 10))
}

func (s *service) square(ctx context.Context, i int) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/square?n=%d", s.base, i), nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(string(b), 10, 64)
}

// startUpstream starts the square service on loopback; stop closes it and waits for it.
func startUpstream() (srv *http.Server, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	srv = &http.Server{
		Addr:              ln.Addr().String(),
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			if err != nil {
				http.Error(w, "n: want an integer", http.StatusBadRequest)
				return
			}
			time.Sleep(upstreamDelay)
			io.WriteString(w, strconv.FormatInt(n*n, 10))
		}),
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	return srv, func() { srv.Close(); <-done }, nil
}

// call asks the service for the sum of squares of 1..fanOut.
func call(c *http.Client, addr string) (string, error) {
	resp, err := c.Get(fmt.Sprintf("http://%s/sum?n=%d", addr, fanOut))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), err
}

// newLogger logs httpfx's lines to out, without timestamps, so that the demo reads well.
func newLogger(out io.Writer) *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.TimeKey, enc.CallerKey = "", ""
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(out), zap.InfoLevel))
}
