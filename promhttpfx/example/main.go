// Command example shows httpfx's metrics in Prometheus text, on loopback, no internet needed.
//
// An upstream "squares" service answers /square?n=7 with 49. An fx app with httpfx.Module
// and promhttpfx.Module sends a known load to it, through the shared client and through an
// upstream client, then shows its metrics:
//
//	go run ./example                          # print the /metrics text once, then stop
//	go run ./example -metrics 127.0.0.1:9464  # serve /metrics there until interrupted
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/promhttpfx"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/fx"
)

const (
	workers = 8  // concurrent callers
	each    = 25 // requests per caller through each client
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

// run parses args, sends the load and shows the metrics: printed to out, or served until ctx
// ends.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	fs.SetOutput(out)
	addr := fs.String("metrics", "", "serve /metrics (Prometheus text) on `address`, such as 127.0.0.1:9464, until interrupted; empty: print it once")
	if err := fs.Parse(args); err != nil {
		return err
	}

	upstream, stopUpstream, err := startUpstream()
	if err != nil {
		return err
	}
	defer stopUpstream()

	reg := prometheus.NewRegistry()
	var shared, squares *http.Client
	app := fx.New(
		fx.NopLogger,
		fx.Supply(fx.Annotate(reg, fx.As(new(prometheus.Registerer)))),
		httpfx.Module,
		promhttpfx.Module,
		httpfx.Upstream("squares", httpfx.UpstreamConfig{BaseURL: "http://" + upstream + "/"}),
		fx.Populate(&shared),
		fx.Invoke(fx.Annotate(func(c *http.Client) { squares = c }, fx.ParamTags(`name:"squares"`))),
	)
	if err := app.Start(ctx); err != nil {
		return err
	}
	defer app.Stop(context.Background())

	if err := load(shared, squares, "http://"+upstream); err != nil {
		return err
	}

	if *addr == "" {
		mfs, err := reg.Gather()
		if err != nil {
			return err
		}
		enc := expfmt.NewEncoder(out, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				return err
			}
		}
		return app.Stop(context.Background())
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(out, "serving http://%s/metrics until interrupted\n", ln.Addr())
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	if serveErr := <-served; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return errors.Join(err, app.Stop(context.Background()))
}

// load sends workers×each requests through each client, and one for a missing page.
func load(shared, squares *http.Client, base string) error {
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				n := w*each + i
				for _, c := range []struct {
					client *http.Client
					url    string
				}{{shared, base + "/square?n=" + strconv.Itoa(n)}, {squares, "square?n=" + strconv.Itoa(n)}} {
					got, err := get(c.client, c.url)
					if err == nil && got != strconv.Itoa(n*n) {
						err = fmt.Errorf("square of %d: got %q", n, got)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if _, err := get(squares, "missing"); err == nil {
		return errors.New("a missing page was found")
	}
	return nil
}

// get sends a GET and returns the body, or an error for a status other than 200.
func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), err
}

// startUpstream starts the squares service on loopback; stop closes it and waits for it.
func startUpstream() (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/square", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil {
			http.Error(w, "n: want an integer", http.StatusBadRequest)
			return
		}
		io.WriteString(w, strconv.Itoa(n*n))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	return ln.Addr().String(), func() { srv.Close(); <-done }, nil
}
