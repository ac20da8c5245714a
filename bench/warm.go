package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"time"
)

// The warm part measures the steady state: per mode and concurrency (a group), epochs; an
// epoch builds every variant (in a shuffled order), starts and warms it, runs blocks, and
// closes the clients. A block runs one segment of every variant, in an order drawn anew for
// each block. A segment is a short load (warmPlan.segN requests from conc callers, or segCap)
// metered like a cell. Variants are compared block by block, so that a slow drift of the
// machine (other engineers' tests) hits both sides of each ratio; and a client's own lasting
// luck (its connections, where its memory landed: two identical clients built once can differ
// by a few percent, and by an allocation per request, for as long as they live) is sampled
// once per epoch, so the intervals are taken over epochs: each epoch's mean over its blocks is
// one observation.

// warmPlan sizes the steady-state part.
type warmPlan struct {
	concs    []int
	epochs   int           // client builds per group, at most
	blocks   int           // blocks per epoch
	segN     int           // requests per segment
	segCap   time.Duration // no new request of a segment starts after this
	warmN    int           // requests per variant after each build, not measured
	groupCap time.Duration // no new block of a group starts after this
	variants []variant
}

// segResult is one segment's measurements.
type segResult struct {
	epoch        int
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
	epochs   int
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

// runWarmGroup runs the epochs of mode m and conc callers: at most wp.epochs, and no block
// started after wp.groupCap.
func runWarmGroup(ctx context.Context, ch *child, wp warmPlan, m mode, conc int, rng *rand.Rand) (warmGroup, error) {
	began := time.Now()
	g := warmGroup{mode: m, conc: conc, variants: wp.variants, segs: make(map[string][]segResult)}
	for g.epochs < wp.epochs && time.Since(began) < wp.groupCap {
		if err := g.runEpoch(ctx, ch, wp, began, rng); err != nil {
			return warmGroup{}, fmt.Errorf("epoch %d: %w", g.epochs+1, err)
		}
		g.epochs++
		fmt.Fprintf(os.Stderr, "warm  %-6s c=%-3d epoch %d/%d, %d blocks, %4.1fs\n", m.name, conc, g.epochs, wp.epochs, g.blocks, time.Since(began).Seconds())
	}
	if g.blocks == 0 {
		return warmGroup{}, errors.New("no block finished within the group's time cap")
	}
	g.elapsed = time.Since(began)
	return g, nil
}

// runEpoch builds, starts and warms every variant, runs wp.blocks blocks (none started after
// wp.groupCap from groupBegan), then closes every client and waits until the server has seen
// their connections close.
func (g *warmGroup) runEpoch(ctx context.Context, ch *child, wp warmPlan, groupBegan time.Time, rng *rand.Rand) (err error) {
	base, url := ch.endpoint(g.mode, 0)
	st, err := ch.stats(ctx)
	if err != nil {
		return err
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
		if _, werr := ch.waitIdle(ctx, g.mode.name, st.ConnsOpen[g.mode.name], 5*time.Second); werr != nil && err == nil {
			err = werr
		}
	}()
	for _, v := range shuffled(rng, wp.variants) {
		cli, err := v.build(target{roots: ch.roots, base: base, conc: g.conc})
		if err != nil {
			return fmt.Errorf("build %s: %w", v.name, err)
		}
		clients[v.name] = cli
		if cli.start != nil {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := cli.start(sctx)
			cancel()
			if err != nil {
				return fmt.Errorf("start %s: %w", v.name, err)
			}
		}
		if ld := drive(ctx, cli, url, g.conc, max(wp.warmN, 4*g.conc), wp.segCap); ld.errors > 0 {
			return fmt.Errorf("warm-up of %s: %d errors, the first: %s", v.name, ld.errors, ld.firstErr)
		}
	}
	for b := 0; b < wp.blocks && time.Since(groupBegan) < wp.groupCap; b++ {
		for _, v := range shuffled(rng, wp.variants) {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("interrupted: %w", err)
			}
			s, err := runSegment(ctx, ch, clients[v.name], g.mode, url, g.conc, wp)
			if err != nil {
				return fmt.Errorf("segment of %s: %w", v.name, err)
			}
			s.epoch = g.epochs
			g.segs[v.name] = append(g.segs[v.name], s)
		}
		g.blocks++
	}
	return nil
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
	rpsRatio     estimate // to the baseline (see warmGroup.pair)
	allocsPerReq float64  // median
	allocsDelta  float64  // mean difference to the baseline's (see warmGroup.diff)
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
	out := make(map[string]warmAgg, len(g.segs))
	for name, segs := range g.segs {
		var a warmAgg
		var rps, allocs, cpu, conns, other []float64
		var p50, p99 []time.Duration
		for _, s := range segs {
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
		}
		a.rps, a.allocsPerReq, a.connsPerReq, a.otherCPU = median(rps), median(allocs), median(conns), median(other)
		a.cpuPerReq = time.Duration(median(cpu))
		a.p50, a.p99 = median(p50), median(p99)
		a.rpsRatio = g.pair(name, baseline, segRPS)
		// CPU per request: lower is better; the ratio is still the variant's over the baseline's.
		a.cpuRatio = g.pair(name, baseline, segCPU)
		a.allocsDelta, a.allocsHalf = g.diff(name, baseline, segAllocs)
		out[name] = a
	}
	return out
}

// pair estimates the ratio of f of variant a to f of variant b: the log ratios of the
// segments of each block, averaged per epoch, then over epochs with a t-interval (over blocks
// if the group has a single epoch). Segments where either value is not positive are left out.
func (g warmGroup) pair(a, b string, f func(segResult) float64) estimate {
	return pooledRatio([]warmGroup{g}, a, b, f)
}

// diff is the mean difference of f of variant a to f of variant b, averaged per epoch and over
// epochs as pair does, with its 95% half-width.
func (g warmGroup) diff(a, b string, f func(segResult) float64) (mean, half float64) {
	return meanCI(g.units(a, b, func(x, y segResult) (float64, bool) { return f(x) - f(y), true }))
}

// units applies d to the segments of a and b of each block and returns the mean per epoch, or
// the values per block if fewer than two epochs have any.
func (g warmGroup) units(a, b string, d func(x, y segResult) (float64, bool)) []float64 {
	sa, sb := g.segs[a], g.segs[b]
	var perBlock []float64
	sums, counts := make(map[int]float64), make(map[int]int)
	var epochs []int
	for i := range min(len(sa), len(sb)) {
		v, ok := d(sa[i], sb[i])
		if !ok {
			continue
		}
		perBlock = append(perBlock, v)
		e := sa[i].epoch
		if counts[e] == 0 {
			epochs = append(epochs, e)
		}
		sums[e] += v
		counts[e]++
	}
	if len(epochs) < 2 {
		return perBlock
	}
	var means []float64
	for _, e := range epochs {
		means = append(means, sums[e]/float64(counts[e]))
	}
	return means
}

// pooledRatio estimates the ratio of f of a to f of b over all groups: the units of every group
// (epoch means) taken together. It is the average over the groups' modes and callers, sharper
// than any one group's.
func pooledRatio(groups []warmGroup, a, b string, f func(segResult) float64) estimate {
	var logs []float64
	for _, g := range groups {
		logs = append(logs, g.units(a, b, func(x, y segResult) (float64, bool) {
			if f(x) <= 0 || f(y) <= 0 {
				return 0, false
			}
			return math.Log(f(x) / f(y)), true
		})...)
	}
	return logEstimate(logs)
}

func segRPS(s segResult) float64    { return s.rps }
func segAllocs(s segResult) float64 { return s.allocsPerReq }
func segCPU(s segResult) float64    { return float64(s.cpuPerReq) }
