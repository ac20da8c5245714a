package httpfxtest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/httpfxtest"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// Billing is the component under test: it takes the upstream client named "payments".
type Billing struct{ payments *http.Client }

func NewBilling(payments *http.Client) *Billing { return &Billing{payments: payments} }

// Charge creates a charge and returns its id.
func (b *Billing) Charge(ctx context.Context, amount int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "v1/charges",
		strings.NewReader(fmt.Sprintf(`{"amount":%d}`, amount)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.payments.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var charge struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&charge); err != nil {
		return "", err
	}
	return charge.ID, nil
}

// Healthy reports whether the payments service is up. It forgets to close the body.
func (b *Billing) Healthy(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "health", nil)
	resp, err := b.payments.Do(req)
	return err == nil && resp.StatusCode == http.StatusOK
}

// paymentsModule is how the app wires Billing.
var paymentsModule = fx.Options(
	httpfx.Upstream("payments", httpfx.UpstreamConfig{
		BaseURL: "https://payments.internal/api/",
		Headers: map[string]string{"Authorization": "Bearer sk_live_123", "X-Api-Version": "2"},
	}),
	fx.Provide(fx.Annotate(NewBilling, fx.ParamTags(`name:"payments"`))),
)

// TestBillingCharges is the README's snippet.
func TestBillingCharges(t *testing.T) {
	env := httpfxtest.New(t)
	payments := env.Upstream("payments", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"id":"ch_1"}`)
	}))
	var billing *Billing
	app := fxtest.New(t, env.Module(httpfx.Module, paymentsModule), fx.Populate(&billing))
	defer app.RequireStart().RequireStop()

	id, err := billing.Charge(context.Background(), 100)
	if err != nil || id != "ch_1" {
		t.Fatalf("Charge = %q, %v; want ch_1", id, err)
	}
	reqs := payments.Requests()
	if len(reqs) != 1 || reqs[0].URL.Path != "/api/v1/charges" || string(reqs[0].Body) != `{"amount":100}` {
		t.Fatalf("payments received %v", reqs)
	}
}

// exampleT stands in for the *testing.T of a test, so that the examples can show what a test
// reports: it prints failures and runs cleanups at end.
type exampleT struct {
	testing.TB
	cleanups []func()
}

func (t *exampleT) Helper()                           {}
func (t *exampleT) Logf(string, ...any)               {}
func (t *exampleT) Errorf(format string, args ...any) { fmt.Printf("FAIL: "+format+"\n", args...) }
func (t *exampleT) FailNow()                          { panic("FailNow") }
func (t *exampleT) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }

// end runs the cleanups, as the end of a test does.
func (t *exampleT) end() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// Route an upstream client by name to a test handler, then look at what it received: the
// URL and headers it gets in production, credentials redacted when printed.
func Example() {
	t := new(exampleT) // a test's t
	env := httpfxtest.New(t)
	payments := env.Upstream("payments", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Println("handler:", r.Proto, r.Host, r.URL.Path)
		io.WriteString(w, `{"id":"ch_1"}`)
	}))
	var billing *Billing
	app := fxtest.New(t, env.Module(httpfx.Module, paymentsModule), fx.Populate(&billing))
	app.RequireStart()

	fmt.Println(billing.Charge(context.Background(), 100))
	app.RequireStop()
	t.end()
	fmt.Println(payments.Requests()[0])
	// Output:
	// handler: HTTP/2.0 payments.internal /api/v1/charges
	// ch_1 <nil>
	// POST https://payments.internal/api/v1/charges
	// Accept-Encoding: gzip
	// Authorization: [redacted]
	// Content-Length: 14
	// Content-Type: application/json
	// User-Agent: Go-http-client/2.0
	// X-Api-Version: [redacted]
	//
	// {"amount":100}
}

// Route a host, for clients that send absolute URLs, such as the shared client.
func ExampleEnv_Host() {
	t := new(exampleT) // a test's t
	env := httpfxtest.New(t)
	search := env.Host("search.internal", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "3 results")
	}))
	var client *http.Client
	app := fxtest.New(t, env.Module(httpfx.Module), fx.Populate(&client))
	app.RequireStart()

	resp, err := client.Get("http://search.internal/q?term=fx&api_key=k1")
	if err != nil {
		panic(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(string(b))
	app.RequireStop()
	t.end()
	fmt.Println(search.Requests()[0].URL.RawQuery)
	fmt.Println(search.Requests()[0])
	// Output:
	// 3 results
	// term=fx&api_key=k1
	// GET http://search.internal/q?term=fx&api_key=[redacted]
	// Accept-Encoding: gzip
	// User-Agent: Go-http-client/1.1
}

// A component that never closes a response body fails its test, which names the line that
// sent the request.
func Example_unclosedBody() {
	t := new(exampleT) // a test's t
	env := httpfxtest.New(t)
	env.Upstream("payments", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	var billing *Billing
	app := fxtest.New(t, env.Module(httpfx.Module, paymentsModule), fx.Populate(&billing))
	app.RequireStart()

	fmt.Println(billing.Healthy(context.Background()))
	app.RequireStop()
	t.end()
	// Output:
	// true
	// FAIL: httpfxtest: GET https://payments.internal/api/health (upstream "payments"): response body never closed nor read to EOF
	// 	sent at example_test.go:49 in httpfxtest_test.(*Billing).Healthy
	// 	called from example_test.go:175 in httpfxtest_test.Example_unclosedBody
}
