// Command bench compares httpfx's zero-config client with other common ways of building a Go
// HTTP client, against a loopback server that runs in a separate process.
//
//	go run .          # full run: 4 rounds, writes results/report.md and results/chart.svg
//	go run . -quick   # a smoke run of the same matrix, 1 round, small counts
//
// For each server mode (plain HTTP/1.1, TLS offering HTTP/2, TLS with HTTP/1.1 only), server
// delay (0 and 5ms), concurrency (1, 16, 128, 512) and client variant it measures one cell:
// a fresh client sends a fixed number of requests (stopping early at a time cap) and is
// closed. Variants are interleaved and the matrix is repeated over rounds; the report gives
// medians over rounds. See README.md for what each column means.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// plan is the size of a run.
type plan struct {
	name     string
	rounds   int
	modes    []mode
	concs    []int
	delays   []time.Duration
	timeCap  time.Duration // per cell
	minN     int           // requests per cell: max(minN, perConc×concurrency), at most maxN
	perConc  int
	maxN     int
	variants []variant
	// A cell during which other processes used more than noisyCPU of the host's CPU is run
	// again, at most maxRetries times and within retryBudget for the whole run; the quietest
	// attempt is kept.
	noisyCPU    float64
	maxRetries  int
	retryBudget time.Duration
}

// requests is the number of requests a cell at concurrency conc sends (unless its time cap
// ends it first).
func (p plan) requests(conc int) int { return min(max(p.minN, p.perConc*conc), p.maxN) }

func fullPlan() plan {
	return plan{
		name: "full", rounds: 4,
		modes:   modes,
		concs:   []int{1, 16, 128, 512},
		delays:  []time.Duration{0, 5 * time.Millisecond},
		timeCap: 800 * time.Millisecond,
		minN:    2000, perConc: 40, maxN: 16384,
		variants: allVariants(),
		noisyCPU: 0.20, maxRetries: 2, retryBudget: 45 * time.Second,
	}
}

func quickPlan() plan {
	return plan{
		name: "quick", rounds: 1,
		modes:   modes,
		concs:   []int{1, 16, 128, 512},
		delays:  []time.Duration{0, 5 * time.Millisecond},
		timeCap: 250 * time.Millisecond,
		minN:    200, perConc: 4, maxN: 2048,
		variants: allVariants(),
		noisyCPU: 0.20, maxRetries: 1, retryBudget: 5 * time.Second,
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveFlag {
		os.Exit(serveMain())
	}
	quick := flag.Bool("quick", false, "small counts and 1 round (under a minute)")
	out := flag.String("out", "results", "directory for report.md and chart.svg")
	rounds := flag.Int("rounds", 0, "override the number of rounds (0 keeps the plan's)")
	onlyModes := flag.String("modes", "", "comma-separated modes to run (default all: http1,tls-h2,tls-h1)")
	onlyVariants := flag.String("variants", "", "comma-separated variants to run (default all)")
	onlyConcs := flag.String("concs", "", "comma-separated concurrencies (default 1,16,128,512)")
	onlyDelays := flag.String("delays", "", "comma-separated server delays (default 0s,5ms)")
	flag.Parse()

	p := fullPlan()
	if *quick {
		p = quickPlan()
	}
	if *rounds > 0 {
		p.rounds = *rounds
	}
	if err := p.restrict(*onlyModes, *onlyVariants, *onlyConcs, *onlyDelays); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, p, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

// cellKey identifies a cell across rounds.
type cellKey struct {
	mode    string
	delay   time.Duration
	conc    int
	variant string
}

// run starts the server process, measures every cell of p for p.rounds rounds, and writes the
// report and the chart to outDir. The server process is stopped on every path.
func run(ctx context.Context, p plan, outDir string) (err error) {
	began := time.Now()
	ch, err := startChild(10 * time.Second)
	if err != nil {
		return err
	}
	defer func() {
		if serr := ch.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	fmt.Fprintf(os.Stderr, "bench: %s run, %d round(s), server pid %d, GOMAXPROCS %d\n",
		p.name, p.rounds, ch.cmd.Process.Pid, runtime.GOMAXPROCS(0))

	results := make(map[cellKey][]cellResult)
	q := &quietRunner{plan: p, child: ch, budget: p.retryBudget}
	total := p.rounds * len(p.modes) * len(p.delays) * len(p.concs) * len(p.variants)
	done := 0
	for round := range p.rounds {
		for _, spec := range p.cells(round) {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("interrupted: %w", err)
			}
			r, err := q.run(ctx, spec)
			if err != nil {
				return fmt.Errorf("cell %s delay=%v c=%d %s: %w", spec.mode.name, spec.delay, spec.conc, spec.variant.name, err)
			}
			k := cellKey{spec.mode.name, spec.delay, spec.conc, spec.variant.name}
			results[k] = append(results[k], r)
			done++
			fmt.Fprintf(os.Stderr, "[%3d/%d %4.0fs] r%d %-6s d=%-3v c=%-3d %-15s %6.0f req/s p99 %8v conns/req %.3f err %d other CPU %3.0f%%\n",
				done, total, time.Since(began).Seconds(), round+1, spec.mode.name, spec.delay, spec.conc, spec.variant.name,
				r.RPS, r.P99.Round(10*time.Microsecond), r.ConnsPerReq, r.Errors, 100*r.OtherCPU)
		}
	}

	rep := buildReport(p, results, time.Since(began))
	rep.retries = q.retries
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", outDir, err)
	}
	md := rep.markdown()
	if err := os.WriteFile(filepath.Join(outDir, "report.md"), []byte(md), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(outDir, "chart.svg"), []byte(rep.chart()), 0o644); err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	fmt.Print(md)
	fmt.Fprintf(os.Stderr, "bench: wrote %s and %s in %v\n",
		filepath.Join(outDir, "report.md"), filepath.Join(outDir, "chart.svg"), time.Since(began).Round(time.Second))
	return nil
}

// cells lists one round's cells in the order they run: per mode, delay and concurrency, every
// variant, starting with a different one each round.
func (p plan) cells(round int) []cellSpec {
	var specs []cellSpec
	order := rotate(p.variants, round)
	for _, m := range p.modes {
		for _, delay := range p.delays {
			for _, conc := range p.concs {
				for _, v := range order {
					specs = append(specs, cellSpec{mode: m, delay: delay, conc: conc, n: p.requests(conc), timeCap: p.timeCap, variant: v})
				}
			}
		}
	}
	return specs
}

// quietRunner runs cells, running a cell again while other processes were busy during it
// (plan.noisyCPU, plan.maxRetries), within a budget of time for all re-runs of the run.
type quietRunner struct {
	plan    plan
	child   *child
	budget  time.Duration // left for re-runs
	retries int
}

// run measures spec and returns the attempt during which other processes used the least CPU.
func (q *quietRunner) run(ctx context.Context, spec cellSpec) (cellResult, error) {
	var best cellResult
	for attempt := 0; ; attempt++ {
		began := time.Now()
		r, err := runCell(ctx, q.child, spec)
		if err != nil {
			return cellResult{}, err
		}
		if attempt > 0 {
			q.budget -= time.Since(began)
		}
		if attempt == 0 || r.OtherCPU < best.OtherCPU {
			best = r
		}
		if best.OtherCPU <= q.plan.noisyCPU || attempt == q.plan.maxRetries || q.budget <= 0 {
			return best, nil
		}
		q.retries++
		fmt.Fprintf(os.Stderr, "      other processes used %.0f%% of the CPU; running the cell again\n", 100*r.OtherCPU)
	}
}

// restrict keeps only the named modes, variants, concurrencies and delays of p; an empty list
// keeps all. A name that matches nothing is an error.
func (p *plan) restrict(modeList, variantList, concList, delayList string) error {
	if modeList != "" {
		var ms []mode
		for _, name := range strings.Split(modeList, ",") {
			i := slices.IndexFunc(modes, func(m mode) bool { return m.name == name })
			if i < 0 {
				return fmt.Errorf("unknown mode %q", name)
			}
			ms = append(ms, modes[i])
		}
		p.modes = ms
	}
	if variantList != "" {
		var vs []variant
		for _, name := range strings.Split(variantList, ",") {
			i := slices.IndexFunc(p.variants, func(v variant) bool { return v.name == name })
			if i < 0 {
				return fmt.Errorf("unknown variant %q", name)
			}
			vs = append(vs, p.variants[i])
		}
		p.variants = vs
	}
	if concList != "" {
		p.concs = nil
		for _, f := range strings.Split(concList, ",") {
			c, err := strconv.Atoi(f)
			if err != nil || c < 1 {
				return fmt.Errorf("bad concurrency %q", f)
			}
			p.concs = append(p.concs, c)
		}
	}
	if delayList != "" {
		p.delays = nil
		for _, f := range strings.Split(delayList, ",") {
			d, err := time.ParseDuration(f)
			if err != nil || d < 0 || d > maxDelay {
				return fmt.Errorf("bad delay %q (want 0s to %v)", f, maxDelay)
			}
			p.delays = append(p.delays, d)
		}
	}
	return nil
}

// rotate returns vs rotated left by k, so that no variant always runs first.
func rotate(vs []variant, k int) []variant {
	k %= len(vs)
	return append(slices.Clone(vs[k:]), vs[:k]...)
}
