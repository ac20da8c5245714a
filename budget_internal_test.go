package httpfx

import (
	"net/url"
	"testing"
	"time"
)

// A budget allows retries up to percent of the requests of its window plus perSecond a second,
// forgets what is older than the window, and keeps origins apart.
func TestBudget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give              string
		percent, perSec   int
		requests          int
		later             time.Duration // the clock moves on by this before the retries
		wantAllowed       int
		otherOriginAllows bool
	}{
		{give: "no requests: the floor alone", percent: 20, perSec: 1, requests: 0, wantAllowed: 10, otherOriginAllows: true},
		{give: "20% of 100 requests plus the floor", percent: 20, perSec: 1, requests: 100, wantAllowed: 30, otherOriginAllows: true},
		{give: "no floor", percent: 10, perSec: 0, requests: 50, wantAllowed: 5},
		{give: "zero budget", percent: 0, perSec: 0, requests: 1000, wantAllowed: 0},
		{give: "requests past the window are forgotten", percent: 20, perSec: 0, requests: 100, later: budgetWindow * time.Second, wantAllowed: 0},
		{give: "requests within the window count", percent: 20, perSec: 0, requests: 100, later: (budgetWindow - 2) * time.Second, wantAllowed: 20},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Parallel()
			clk := &clock{epoch: time.Now()}
			bs := newBudgets(tt.percent, tt.perSec, clk)
			u := &url.URL{Scheme: "http", Host: "a.example"}
			var b *budget
			for range tt.requests {
				b = bs.request(u)
			}
			if b == nil {
				b = bs.of(u)
			}
			clk.epoch = clk.epoch.Add(-tt.later)
			allowed := 0
			for range 10000 {
				if !bs.retry(b) {
					break
				}
				allowed++
			}
			if allowed != tt.wantAllowed {
				t.Fatalf("allowed %d retries, want %d", allowed, tt.wantAllowed)
			}
			other := bs.of(&url.URL{Scheme: "http", Host: "b.example"})
			if got := bs.retry(other); got != tt.otherOriginAllows {
				t.Fatalf("another origin allows a retry: %v, want %v", got, tt.otherOriginAllows)
			}
		})
	}
}
