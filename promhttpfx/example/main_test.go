package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for one writer and one reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// checkMetrics parses text as Prometheus text, lints it and checks the known load's counts.
func checkMetrics(t *testing.T, text string) {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("the output does not parse as Prometheus text: %v\n%s", err, text)
	}
	var list []*dto.MetricFamily
	for _, mf := range mfs {
		list = append(list, mf)
	}
	problems, err := promlint.NewWithMetricFamilies(list).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	const want = 2*workers*each + 1
	if v := mfs["httpfx_requests_total"].GetMetric()[0].GetCounter().GetValue(); v != want {
		t.Errorf("httpfx_requests_total = %v, want %d", v, want)
	}
	var seen uint64
	for _, m := range mfs["httpfx_request_duration_seconds"].GetMetric() {
		seen += m.GetHistogram().GetSampleCount()
	}
	if seen != want {
		t.Errorf("httpfx_request_duration_seconds counts %d requests, want %d", seen, want)
	}
	for _, name := range []string{"httpfx_connections_opened_total", "httpfx_connections_idle", "httpfx_upstream_requests_total"} {
		if mfs[name] == nil {
			t.Errorf("%s is missing", name)
		}
	}
}

// Printed once, the metrics parse, lint clean and count the load.
func TestPrint(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), nil, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	checkMetrics(t, out.String())
}

// With -metrics, /metrics is served until the context ends, and what it serves parses.
func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-metrics", "127.0.0.1:0"}, &out) }()

	serving := regexp.MustCompile(`serving (http://\S+/metrics)`)
	var url string
	for deadline := time.Now().Add(10 * time.Second); url == ""; time.Sleep(10 * time.Millisecond) {
		if m := serving.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no serving line: %s", out.String())
		}
	}
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	checkMetrics(t, string(b))
	c.CloseIdleConnections()

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
