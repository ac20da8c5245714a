package promhttpfx_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/promhttpfx"
	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/fx"
)

// Expose the client's metrics on the app's Prometheus registry.
func Example() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer upstream.Close()
	reg := prometheus.NewRegistry()

	var client *http.Client
	app := fx.New(fx.NopLogger,
		httpfx.Module,
		promhttpfx.Module, // registers on the graph's Registerer, else prometheus.DefaultRegisterer
		fx.Supply(fx.Annotate(reg, fx.As(new(prometheus.Registerer)))),
		fx.Populate(&client),
	)
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	defer app.Stop(context.Background())
	for range 3 {
		resp, err := client.Get(upstream.URL)
		if err != nil {
			panic(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	n, _ := promtest.GatherAndCount(reg, "httpfx_requests_total", "httpfx_request_duration_seconds")
	fmt.Println(n, "series")
	// Output:
	// 2 series
}

// Without fx: the Observer goes to httpfx.New, the Collector reads the Stats it returns.
func ExampleNewCollector() {
	reg := prometheus.NewRegistry()
	obs := promhttpfx.NewObserver()
	res, err := httpfx.New(httpfx.Params{Config: httpfx.DefaultConfig(), Observers: []httpfx.Observer{obs}})
	if err != nil {
		panic(err)
	}
	reg.MustRegister(promhttpfx.NewCollector(res.Stats, obs))
	fmt.Println(httpfx.Shutdown(context.Background(), res.Client))
	// Output:
	// <nil>
}
