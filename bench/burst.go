package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"
)

// The start part measures a cold start on its own: what the first burst of traffic after a
// deploy sees. A burst builds a new client, runs its start step if it has one (an fx app's
// OnStart hooks: whatever a variant prepares before traffic, such as opening connections,
// happens here and is timed apart), then releases conc callers at once, each sending one
// request. It reports each burst's p50 and p99 latency and the connections the server
// accepted per caller, from build to the end of the burst. Repetitions are blocks: each runs
// every configuration, and every variant of it in an order drawn anew, so that variants are
// paired by repetition.
//
// A variant that prepares connections at start needs nothing here beyond its entry in
// comparedVariants: its build gets the target (base URL and callers) and returns a start.

// startPlan sizes the start part.
type startPlan struct {
	concs    []int
	delays   []time.Duration
	reps     int
	partCap  time.Duration // no repetition started unless it is expected to end within this
	variants []variant
}

// burstKey identifies a configuration and variant of the start part.
type burstKey struct {
	mode    string
	delay   time.Duration
	conc    int
	variant string
}

// burstResult is one burst.
type burstResult struct {
	start      time.Duration // the client's start step; 0 if it has none
	startConns int64         // connections the server accepted from build to the burst
	burstConns int64         // connections the server accepted during the burst
	p50, p99   time.Duration
	ok, errors int
	firstErr   string
	protos     []string
}

// runStartPart runs p.start.reps repetitions of every burst configuration, fewer if the next
// is not expected to end within p.start.partCap, and returns the results and the repetitions
// run.
func runStartPart(ctx context.Context, ch *child, p plan, rng *rand.Rand) (map[burstKey][]burstResult, int, error) {
	sp := p.start
	out := make(map[burstKey][]burstResult)
	began := time.Now()
	rep := 0
	for ; rep < sp.reps && another(began, rep, sp.partCap); rep++ {
		for _, m := range p.modes {
			for _, delay := range sp.delays {
				for _, conc := range sp.concs {
					for _, v := range shuffled(rng, sp.variants) {
						if err := ctx.Err(); err != nil {
							return nil, 0, fmt.Errorf("interrupted: %w", err)
						}
						r, err := runBurst(ctx, ch, m, delay, conc, v)
						if err != nil {
							return nil, 0, fmt.Errorf("%s delay=%v c=%d %s: %w", m.name, delay, conc, v.name, err)
						}
						k := burstKey{m.name, delay, conc, v.name}
						out[k] = append(out[k], r)
					}
				}
			}
		}
		fmt.Fprintf(os.Stderr, "start repetition %d/%d %5.1fs\n", rep+1, sp.reps, time.Since(began).Seconds())
	}
	return out, rep, nil
}

// runBurst builds v for conc callers of mode m, starts it, sends one burst of conc concurrent
// requests (each answered after delay), closes the client and waits until the server has
// seen its connections close.
func runBurst(ctx context.Context, ch *child, m mode, delay time.Duration, conc int, v variant) (r burstResult, err error) {
	base, url := ch.endpoint(m, delay)
	s0, err := ch.stats(ctx)
	if err != nil {
		return burstResult{}, err
	}
	cli, err := v.build(target{roots: ch.roots, base: base, conc: conc})
	if err != nil {
		return burstResult{}, fmt.Errorf("build: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if cerr := cli.close(cctx); cerr != nil && err == nil {
			err = fmt.Errorf("close: %w", cerr)
		}
		if _, werr := ch.waitIdle(ctx, m.name, s0.ConnsOpen[m.name], 5*time.Second); werr != nil && err == nil {
			err = werr
		}
	}()
	if cli.start != nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		t0 := time.Now()
		err := cli.start(sctx)
		r.start = time.Since(t0)
		cancel()
		if err != nil {
			return burstResult{}, fmt.Errorf("start: %w", err)
		}
	}
	s1, err := ch.stats(ctx)
	if err != nil {
		return burstResult{}, err
	}
	lat, protos, errs, firstErr := burst(ctx, cli, url, conc)
	s2, err := ch.stats(ctx)
	if err != nil {
		return burstResult{}, err
	}
	r.startConns = s1.ConnsNew[m.name] - s0.ConnsNew[m.name]
	r.burstConns = s2.ConnsNew[m.name] - s1.ConnsNew[m.name]
	r.p50, r.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	r.ok, r.errors, r.firstErr, r.protos = len(lat), errs, firstErr, protos
	return r, nil
}

// burst starts conc callers, waits until all are ready, releases them at once and waits
// until each has sent its one request (bounded by hardGrace). It returns the sorted latencies
// of the successful requests, the protocols seen, the number of errors and the first.
func burst(ctx context.Context, cli *clientUnderTest, url string, conc int) ([]time.Duration, []string, int, string) {
	ctx, cancel := context.WithTimeout(ctx, hardGrace)
	defer cancel()
	type outcome struct {
		lat   time.Duration
		proto string
		err   error
	}
	outs := make([]outcome, conc)
	release := make(chan struct{})
	var ready, done sync.WaitGroup
	for i := range conc {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-release
			t0 := time.Now()
			proto, err := cli.get(ctx, url)
			outs[i] = outcome{time.Since(t0), proto, err}
		}()
	}
	ready.Wait()
	close(release)
	done.Wait()

	var lat []time.Duration
	var protos []string
	errs, firstErr := 0, ""
	for _, o := range outs {
		if o.err != nil {
			if errs == 0 {
				firstErr = o.err.Error()
			}
			errs++
			continue
		}
		lat = append(lat, o.lat)
		if !slices.Contains(protos, o.proto) {
			protos = append(protos, o.proto)
		}
	}
	slices.Sort(lat)
	slices.Sort(protos)
	return lat, protos, errs, firstErr
}

// burstAgg summarises one configuration and variant over repetitions.
type burstAgg struct {
	reps          int
	start         time.Duration // median
	connsPerCall  float64       // median of (startConns+burstConns)/conc
	startConns    float64       // median connections opened at start
	p50, p99      time.Duration // medians of the bursts' percentiles
	p99Ratio      estimate      // to the baseline's p99, paired by repetition
	errors        int
	firstErr      string
	protos        []string
	hasStartPhase bool
}

// summarizeBursts aggregates every variant of one configuration (the results of mode, delay
// and conc, by variant name).
func summarizeBursts(res map[burstKey][]burstResult, m string, delay time.Duration, conc int, vs []variant) map[string]burstAgg {
	base := res[burstKey{m, delay, conc, baseline}]
	out := make(map[string]burstAgg)
	for _, v := range vs {
		rs, ok := res[burstKey{m, delay, conc, v.name}]
		if !ok {
			continue
		}
		a := burstAgg{reps: len(rs)}
		var starts, p50, p99 []time.Duration
		var conns, sconns, num, den []float64
		for i, r := range rs {
			starts = append(starts, r.start)
			a.hasStartPhase = a.hasStartPhase || r.start > 0
			conns = append(conns, float64(r.startConns+r.burstConns)/float64(conc))
			sconns = append(sconns, float64(r.startConns))
			p50, p99 = append(p50, r.p50), append(p99, r.p99)
			a.errors += r.errors
			if a.firstErr == "" {
				a.firstErr = r.firstErr
			}
			for _, pr := range r.protos {
				if !slices.Contains(a.protos, pr) {
					a.protos = append(a.protos, pr)
				}
			}
			if i < len(base) {
				num, den = append(num, float64(r.p99)), append(den, float64(base[i].p99))
			}
		}
		slices.Sort(a.protos)
		a.start, a.connsPerCall, a.startConns = median(starts), median(conns), median(sconns)
		a.p50, a.p99 = median(p50), median(p99)
		a.p99Ratio = ratioEstimate(num, den)
		out[v.name] = a
	}
	return out
}
