package httpfx_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// raceResult is what a run of postRace saw.
type raceResult struct {
	sent     int64
	failures []error
}

// postRace sends POSTs with replayable bodies (strings.Reader) and a unique X-Request-Id from
// callers goroutines, each pausing pause±1% between requests, until d has passed: the pause
// that meets a server closing idle connections after about as long. It is bounded in time
// and in count.
func postRace(t *testing.T, c *http.Client, url string, callers int, pause, d time.Duration) raceResult {
	t.Helper()
	var (
		mu  sync.Mutex
		res raceResult
		wg  sync.WaitGroup
	)
	end := time.Now().Add(d)
	maxPer := int(d/pause) + 2
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxPer && time.Now().Before(end); i++ {
				id := fmt.Sprintf("c%d-%d", g, i)
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"charge":100}`))
				req.Header.Set("X-Request-Id", id)
				resp, err := c.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				res.sent++
				if err != nil {
					res.failures = append(res.failures, fmt.Errorf("%s: %w", id, err))
				}
				mu.Unlock()
				jitter := time.Duration(rand.Int64N(int64(pause)/50+1)) - pause/100
				time.Sleep(pause + jitter)
			}
		}()
	}
	wg.Wait()
	return res
}

// The keep-alive race against a real nginx: callers pause about as long as nginx keeps an
// idle connection, so that it closes connections just as they are reused. net/http alone
// loses POSTs to it (they fail with EOF or a reset, and nginx never saw them); through httpfx
// every POST succeeds, and nginx logged each request exactly once.
func TestKeepAliveRaceLosesNoPost(t *testing.T) {
	tests := []struct {
		name      string
		keepalive string // nginx's keepalive_timeout
		pause     time.Duration
		d         time.Duration
		wantBound time.Duration // the idle bound httpfx should learn, at most
	}{
		{"nginx closes idle connections after 100ms", "100ms", 100 * time.Millisecond, 3 * time.Second, 150 * time.Millisecond},
		{"nginx announces Keep-Alive: timeout=1", "1s 1", time.Second, 4 * time.Second, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ngx := startNginx(t, tt.keepalive)
			var (
				client *http.Client
				stats  *httpfx.Stats
			)
			app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&client, &stats))
			app.RequireStart()
			res := postRace(t, client, ngx.URL, 16, tt.pause, tt.d)
			s := stats.Snapshot()
			app.RequireStop()

			for _, err := range res.failures {
				t.Errorf("POST failed: %v", err)
			}
			ids := ngx.ids(t)
			if int64(len(ids)) != res.sent {
				t.Errorf("nginx logged %d request ids, %d POSTs were sent", len(ids), res.sent)
			}
			for id, n := range ids {
				if n != 1 {
					t.Errorf("nginx processed %s %d times, want once", id, n)
				}
			}
			bound, ok := s.IdleBounds[strings.TrimPrefix(ngx.URL, "http://")]
			if !ok || bound > tt.wantBound {
				t.Errorf("learned idle bound %v (%v), want at most %v", bound, ok, tt.wantBound)
			}
			t.Logf("%d POSTs, %d failed; replayed %d, retired %v, idle bound %v, connections opened %d",
				res.sent, len(res.failures), s.Replayed, s.ConnsRetired, bound, s.ConnsOpened)
		})
	}
}

// TestKeepAliveRaceBaseline measures, for the README, how many POSTs a transport with the
// same settings but without httpfx loses in the race above. It asserts nothing and runs only
// when HTTPFX_BASELINE is set.
func TestKeepAliveRaceBaseline(t *testing.T) {
	if os.Getenv("HTTPFX_BASELINE") == "" {
		t.Skip("set HTTPFX_BASELINE=1 to measure net/http alone in the keep-alive race")
	}
	ngx := startNginx(t, "100ms")
	cfg := httpfx.DefaultConfig()
	tr := &http.Transport{
		MaxIdleConns: cfg.MaxIdleConns, MaxIdleConnsPerHost: cfg.MaxIdleConnsPerHost,
		MaxConnsPerHost: cfg.MaxConnsPerHost, IdleConnTimeout: cfg.IdleConnTimeout,
	}
	defer tr.CloseIdleConnections()
	res := postRace(t, &http.Client{Transport: tr}, ngx.URL, 16, 100*time.Millisecond, 10*time.Second)
	processed := 0
	ids := ngx.ids(t)
	for _, err := range res.failures {
		id, _, _ := strings.Cut(err.Error(), ":")
		processed += ids[id]
	}
	t.Logf("net/http alone: %d of %d POSTs failed (%.1f%%); nginx processed %d of the failed ones",
		len(res.failures), res.sent, 100*float64(len(res.failures))/float64(res.sent), processed)
}
