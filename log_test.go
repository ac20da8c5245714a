package httpfx_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// No log line, at any level, carries a header value, URL userinfo or query string.
func TestLogsCarryNoSecrets(t *testing.T) {
	secrets := []string{"s3cr3t-bearer", "c00kie-value", "hunter2", "t0ken-in-query", "ua-secret"}
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "/final?token=t0ken-in-query", http.StatusFound)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	core, logs := observer.New(zap.DebugLevel)
	var client *http.Client
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Supply(zap.New(core)), fx.Populate(&client),
		withConfig(func(c *httpfx.Config) { c.UserAgent = "svc ua-secret" }))
	app.RequireStart()
	target := strings.Replace(u.URL, "http://", "http://admin:hunter2@", 1) + "/redirect?token=t0ken-in-query"
	req, _ := http.NewRequest(http.MethodGet, target, nil)
	req.Header.Set("Authorization", "Bearer s3cr3t-bearer")
	req.Header.Set("Cookie", "session=c00kie-value")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	app.RequireStop()

	if logs.Len() == 0 {
		t.Fatal("nothing was logged; the test would prove nothing")
	}
	for _, e := range logs.All() {
		fields, _ := json.Marshal(e.ContextMap())
		line := e.Message + " " + string(fields)
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("log line leaks %q: %s", s, line)
			}
		}
	}
	u.RequireNoConns(t)
}
