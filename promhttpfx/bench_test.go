package promhttpfx_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"github.com/httpfx/httpfx/promhttpfx"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
)

// BenchmarkModule measures one GET of a short body over HTTP/1.1 on loopback through the
// shared client, without and with the module; the difference is its cost per request.
//
//	go test -run '^$' -bench . -benchmem -count 6
func BenchmarkModule(b *testing.B) {
	for _, v := range []struct {
		name string
		opts fx.Option
	}{
		{"none", fx.Options()},
		{"prometheus", fx.Options(promhttpfx.Module, withRegistry(prometheus.NewRegistry()))},
	} {
		b.Run(v.name, func(b *testing.B) {
			u := testutil.NewServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
			var c *http.Client
			app := fx.New(fx.NopLogger, httpfx.Module, v.opts, fx.Populate(&c))
			if err := app.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer app.Stop(context.Background())
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := get(c, u.URL); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
