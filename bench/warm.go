package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"time"
)

// The warm part measures the steady state: per mode and concurrency (a group), every variant
// is built once, started and warmed, then the group runs blocks; a block runs one segment of
// every variant, in an order drawn anew for each block. A segment is a short load (warmPlan.segN
// requests from conc callers) metered like a cell. Variants are compared block by block, so
// that a slow drift of the machine (other engineers' tests) hits both sides of each ratio.

// warmPlan sizes the steady-state part.
type warmPlan struct {
	concs    []int
	blocks   int           // blocks per group, at most
	segN     int           // requests per segment
	segCap   time.Duration // no new request of a segment starts after this
	warmN    int           // requests per variant before the first block, not measured
	groupCap time.Duration // no new block of a group starts after this
	variants []variant
}

// segResult is one segment's measurements.
type segResult struct {
	ok, errors   int
	firstErr     string
	rps          float64
	p50, p99     time.Duration
	allocsPerReq float64
	cpuPerReq    time.Duration // client CPU
	connsPerReq  float64       // connections the server accepted / requests
	otherCPU     float64
}

// warmGroup is one mode and concurrency of the warm part: every variant's segments, indexed
// by block (every block has all variants).
type warmGroup struct {
	mode     mode
	conc     int
	variants []variant
	segs     map[string][]segResult
	blocks   int
	elapsed  time.Duration
}

// runWarmPart runs every group of p.warm.
func runWarmPart(ctx context.Context, ch *child, p plan, rng *rand.Rand) ([]warmGroup, error) {
	var groups []warmGroup
	for _, m := range p.modes {
		for _, conc := range p.warm.concs {
			g, err := runWarmGroup(ctx, ch, p.warm, m, conc, rng)
			if err != nil {
				return nil, fmt.Errorf("%s c=%d: %w", m.name, conc, err)
			}
			groups = append(groups, g)
		}
	}
	return groups, nil
}

// runWarmGroup builds, starts and warms every variant for mode m and conc callers, runs the
// blocks (at most wp.blocks, none started after wp.groupCap), then closes every client and
// waits until the server has seen their connections close.
func runWarmGroup(ctx context.Context, ch *child, wp warmPlan, m mode, conc int, rng *rand.Rand) (g warmGroup, err error) {
	began := time.Now()
	g = warmGroup{mode: m, conc: conc, variants: wp.variants, segs: make(map[string][]segResult)}
	base, url := ch.endpoint(m, 0)
	st, err := ch.stats(ctx)
	if err != nil {
		return warmGroup{}, err
	}
	clients := make(map[string]*clientUnderTest, len(wp.variants))
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		for name, cli := range clients {
			if cerr := cli.close(cctx); cerr != nil && err == nil {
				err = fmt.Errorf("close %s: %w", name, cerr)
			}
		}
		if _, werr := ch.waitIdle(ctx, m.name, st.ConnsOpen[m.name], 5*time.Second); werr != nil && err == nil {
			err = werr
		}
	}()
	for _, v := range wp.variants {
		cli, err := v.build(target{roots: ch.roots, base: base, conc: conc})
		if err != nil {
			return warmGroup{}, fmt.Errorf("build %s: %w", v.name, err)
		}
		clients[v.name] = cli
		if cli.start != nil {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := cli.start(sctx)
			cancel()
			if err != nil {
				return warmGroup{}, fmt.Errorf("start %s: %w", v.name, err)
			}
		}
		if ld := drive(ctx, cli, url, conc, max(wp.warmN, 4*conc), wp.segCap); ld.errors > 0 {
			return warmGroup{}, fmt.Errorf("warm-up of %s: %d errors, the first: %s", v.name, ld.errors, ld.firstErr)
		}
	}
	for g.blocks < wp.blocks && time.Since(began) < wp.groupCap {
		for _, v := range shuffled(rng, wp.variants) {
			if err := ctx.Err(); err != nil {
				return warmGroup{}, fmt.Errorf("interrupted: %w", err)
			}
			s, err := runSegment(ctx, ch, clients[v.name], m, url, conc, wp)
			if err != nil {
				return warmGroup{}, fmt.Errorf("segment of %s: %w", v.name, err)
			}
			g.segs[v.name] = append(g.segs[v.name], s)
		}
		g.blocks++
		if g.blocks%5 == 0 || g.blocks == wp.blocks {
			fmt.Fprintf(os.Stderr, "warm  %-6s c=%-3d block %d/%d %4.1fs\n", m.name, conc, g.blocks, wp.blocks, time.Since(began).Seconds())
		}
	}
	if g.blocks == 0 {
		return warmGroup{}, errors.New("no block finished within the group's time cap")
	}
	g.elapsed = time.Since(began)
	return g, nil
}

// runSegment runs one segment of cli and meters it.
func runSegment(ctx context.Context, ch *child, cli *clientUnderTest, m mode, url string, conc int, wp warmPlan) (segResult, error) {
	m0, err := meterBegin(ctx, ch)
	if err != nil {
		return segResult{}, err
	}
	ld := drive(ctx, cli, url, conc, wp.segN, wp.segCap)
	mt, err := m0.end(ctx, ch, m, ld.elapsed)
	if err != nil {
		return segResult{}, err
	}
	s := segResult{
		ok: ld.ok, errors: ld.errors, firstErr: ld.firstErr,
		p50: percentile(ld.latencies, 0.50), p99: percentile(ld.latencies, 0.99),
		otherCPU: mt.otherCPU,
	}
	if ld.elapsed > 0 {
		s.rps = float64(ld.ok) / ld.elapsed.Seconds()
	}
	if sent := ld.ok + ld.errors; sent > 0 {
		s.allocsPerReq = float64(mt.mallocs) / float64(sent)
		s.cpuPerReq = mt.cpu / time.Duration(sent)
		s.connsPerReq = float64(mt.newConns) / float64(sent)
	}
	return s, nil
}

// warmAgg summarises one variant of a group.
type warmAgg struct {
	rps          float64  // median over segments
	rpsRatio     estimate // to the baseline, paired by block
	allocsPerReq float64  // median
	allocsDelta  float64  // mean over blocks of the difference to the baseline's
	allocsHalf   float64  // its 95% half-width
	cpuPerReq    time.Duration
	cpuRatio     estimate
	p50, p99     time.Duration // medians over segments
	connsPerReq  float64       // median
	errors       int           // total
	firstErr     string
	otherCPU     float64 // median
}

// summary aggregates every variant of g.
func (g warmGroup) summary() map[string]warmAgg {
	base := g.segs[baseline]
	out := make(map[string]warmAgg, len(g.segs))
	for name, segs := range g.segs {
		var a warmAgg
		var rps, brps, allocs, cpu, bcpu, conns, other, dAllocs []float64
		var p50, p99 []time.Duration
		for i, s := range segs {
			rps = append(rps, s.rps)
			allocs = append(allocs, s.allocsPerReq)
			cpu = append(cpu, float64(s.cpuPerReq))
			conns = append(conns, s.connsPerReq)
			other = append(other, s.otherCPU)
			p50, p99 = append(p50, s.p50), append(p99, s.p99)
			a.errors += s.errors
			if a.firstErr == "" {
				a.firstErr = s.firstErr
			}
			if i < len(base) {
				brps = append(brps, base[i].rps)
				bcpu = append(bcpu, float64(base[i].cpuPerReq))
				dAllocs = append(dAllocs, s.allocsPerReq-base[i].allocsPerReq)
			}
		}
		a.rps, a.allocsPerReq, a.connsPerReq, a.otherCPU = median(rps), median(allocs), median(conns), median(other)
		a.cpuPerReq = time.Duration(median(cpu))
		a.p50, a.p99 = median(p50), median(p99)
		a.rpsRatio = ratioEstimate(rps, brps)
		// CPU per request: lower is better, so the ratio is the variant's over the baseline's.
		a.cpuRatio = ratioEstimate(cpu, bcpu)
		a.allocsDelta, a.allocsHalf = meanCI(dAllocs)
		out[name] = a
	}
	return out
}

// pair estimates the ratio of f of variant a to f of variant b, paired by block.
func (g warmGroup) pair(a, b string, f func(segResult) float64) estimate {
	var num, den []float64
	for i, s := range g.segs[a] {
		if i < len(g.segs[b]) {
			num, den = append(num, f(s)), append(den, f(g.segs[b][i]))
		}
	}
	return ratioEstimate(num, den)
}

// diff is the mean over blocks of f of variant a minus f of variant b, with its 95%
// half-width.
func (g warmGroup) diff(a, b string, f func(segResult) float64) (mean, half float64) {
	var d []float64
	for i, s := range g.segs[a] {
		if i < len(g.segs[b]) {
			d = append(d, f(s)-f(g.segs[b][i]))
		}
	}
	return meanCI(d)
}

func segRPS(s segResult) float64    { return s.rps }
func segAllocs(s segResult) float64 { return s.allocsPerReq }
func segCPU(s segResult) float64    { return float64(s.cpuPerReq) }
