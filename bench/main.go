// Command bench compares httpfx's zero-config client with other common ways of building a Go
// HTTP client, against a loopback server that runs in a separate process.
//
//	go run .              # full run: every part, writes results/ (report, chart) and ../docs/performance.md
//	go run . -quick       # a smoke run of every part with small counts, under a minute
//	go run . -parts warm  # the steady-state part alone
//
// A run has up to four parts (-parts):
//
//   - start: cold start. A new client, then one burst of concurrent first requests: p50/p99
//     latency and connections per caller.
//   - warm: steady state. Clients built once per group and warmed, then many short segments
//     in shuffled order; geometric-mean ratios to raw-tuned with 95% confidence intervals,
//     allocations and client CPU per request.
//   - cells: the cold-cell matrix. For each server mode, delay, concurrency and variant a
//     fresh client sends a fixed number of requests (stopping early at a time cap) and is
//     closed; repeated over rounds.
//   - inpkg: the core module's in-package benchmarks (go test -bench), run several times.
//
// Every part measures the A/A control raw-tuned-b, a second raw-tuned, beside raw-tuned: the
// spread of its ratio is the noise of the run, and a ratio whose interval overlaps the A/A's
// is within noise. See README.md for what each column means, and ../docs/performance.md for
// the page a full run writes.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
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

// partSet is a set of the parts of a run.
type partSet uint8

const (
	partStart partSet = 1 << iota // cold start: the first burst of a new client
	partWarm                      // steady state: warm clients, shuffled short segments
	partCells                     // the cold-cell matrix
	partInpkg                     // the core module's in-package benchmarks

	variantParts = partStart | partWarm | partCells // the parts that measure variants
	everyPart    = variantParts | partInpkg
)

// partName is a part's name on the command line.
type partName struct {
	name string
	part partSet
}

// partNames name the parts, in the order a run measures them.
func partNames() []partName {
	return []partName{{"start", partStart}, {"warm", partWarm}, {"cells", partCells}, {"inpkg", partInpkg}}
}

func (s partSet) has(p partSet) bool { return s&p != 0 }

// plan is the size of a run.
type plan struct {
	name  string
	parts partSet
	seed  uint64 // of the shuffled orders
	modes []mode
	// complete is set when no flag narrowed the run: only then is the performance page written.
	complete bool
	start    startPlan
	warm     warmPlan
	cells    cellPlan
	inpkg    inpkgPlan
}

// cellPlan sizes the cold-cell part.
type cellPlan struct {
	rounds   int
	partCap  time.Duration // no round started unless it is expected to end within this
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
func (p cellPlan) requests(conc int) int { return min(max(p.minN, p.perConc*conc), p.maxN) }

func fullPlan() plan {
	return plan{
		name: "full", parts: everyPart, seed: 1, modes: modes(), complete: true,
		start: startPlan{
			concs:  []int{1, 16, 128},
			delays: []time.Duration{0, 5 * time.Millisecond},
			reps:   5, partCap: 90 * time.Second,
		},
		warm: warmPlan{
			concs:  []int{1, 16},
			epochs: 8, blocks: 4, segN: 3000, segCap: 150 * time.Millisecond, warmN: 300,
			groupCap: 30 * time.Second,
		},
		cells: cellPlan{
			rounds: 4, partCap: 330 * time.Second,
			concs:   []int{16, 128, 512},
			delays:  []time.Duration{0, 5 * time.Millisecond},
			timeCap: 500 * time.Millisecond,
			minN:    1500, perConc: 30, maxN: 8192,
			noisyCPU: 0.20, maxRetries: 1, retryBudget: 20 * time.Second,
		},
		inpkg: inpkgPlan{runs: 16, benchtime: "2000x"},
	}
}

func quickPlan() plan {
	return plan{
		name: "quick", parts: variantParts, seed: 1, modes: modes(), complete: true,
		start: startPlan{
			concs:  []int{16},
			delays: []time.Duration{0},
			reps:   2, partCap: 10 * time.Second,
		},
		warm: warmPlan{
			concs:  []int{16},
			epochs: 3, blocks: 2, segN: 500, segCap: 150 * time.Millisecond, warmN: 200,
			groupCap: 4 * time.Second,
		},
		cells: cellPlan{
			rounds: 1, partCap: 30 * time.Second,
			concs:   []int{16, 128},
			delays:  []time.Duration{0, 5 * time.Millisecond},
			timeCap: 200 * time.Millisecond,
			minN:    200, perConc: 4, maxN: 2048,
			noisyCPU: 0.20, maxRetries: 0, retryBudget: 0,
		},
		inpkg: inpkgPlan{runs: 1, benchtime: "200x"},
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveFlag {
		os.Exit(serveMain())
	}
	quick := flag.Bool("quick", false, "every variant part with small counts (under a minute); writes to results/quick unless -out is given")
	out := flag.String("out", "", "directory for report.md and chart.svg (default results, or results/quick with -quick)")
	page := flag.String("page", "", "file a complete run writes the performance page to (default ../docs/performance.md; with -quick or -out, performance.md in the output directory)")
	parts := flag.String("parts", "", "comma-separated parts to run: start, warm, cells, inpkg (default all; -quick: all but inpkg)")
	seed := flag.Uint64("seed", 0, "seed of the shuffled orders (0 keeps the plan's)")
	rounds := flag.Int("rounds", 0, "cells: override the number of rounds (0 keeps the plan's)")
	epochs := flag.Int("epochs", 0, "warm: override the number of epochs (client builds) per group (0 keeps the plan's)")
	blocks := flag.Int("blocks", 0, "warm: override the number of blocks per epoch (0 keeps the plan's)")
	reps := flag.Int("reps", 0, "start: override the number of bursts per variant and configuration (0 keeps the plan's)")
	runs := flag.Int("runs", 0, "inpkg: override the number of runs of the test binary (0 keeps the plan's)")
	onlyModes := flag.String("modes", "", "comma-separated modes to run (default all: http1,tls-h2,tls-h1)")
	onlyVariants := flag.String("variants", "", "comma-separated variants to run in every part (default: each part's own; raw-tuned and raw-tuned-b are always run)")
	onlyConcs := flag.String("concs", "", "comma-separated concurrencies for every part (default: each part's own)")
	onlyDelays := flag.String("delays", "", "comma-separated server delays for the start and cells parts (default 0s,5ms)")
	flag.Parse()

	p := fullPlan()
	dir := "results"
	if *quick {
		p = quickPlan()
		dir = filepath.Join("results", "quick")
	}
	if *out != "" {
		dir = *out
	}
	pagePath := filepath.Join("..", "docs", "performance.md")
	if *quick || *out != "" {
		pagePath = filepath.Join(dir, "performance.md") // a trial run leaves the docs alone
	}
	if *page != "" {
		pagePath = *page
	}
	if *seed != 0 {
		p.seed = *seed
	}
	for _, o := range []struct {
		v   int
		dst *int
	}{{*rounds, &p.cells.rounds}, {*epochs, &p.warm.epochs}, {*blocks, &p.warm.blocks}, {*reps, &p.start.reps}, {*runs, &p.inpkg.runs}} {
		if o.v > 0 {
			*o.dst = o.v
		}
	}
	if err := p.restrict(*parts, *onlyModes, *onlyVariants, *onlyConcs, *onlyDelays); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, p, dir, pagePath); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

// run starts the server process, measures the parts of p in order (start, warm, cells,
// inpkg), and writes the report and the chart to outDir and, for a complete run, the
// performance page to page. The server process is stopped on every path.
func run(ctx context.Context, p plan, outDir, page string) (err error) {
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
	fmt.Fprintf(os.Stderr, "bench: %s run, server pid %d, GOMAXPROCS %d, seed %d\n",
		p.name, ch.cmd.Process.Pid, runtime.GOMAXPROCS(0), p.seed)

	rng := rand.New(rand.NewPCG(p.seed, 0x68747470667862)) // the second word is fixed
	rep := &report{plan: p, when: began}
	if p.parts.has(partStart) {
		t0 := time.Now()
		if rep.start, rep.plan.start.reps, err = runStartPart(ctx, ch, p, rng); err != nil {
			return fmt.Errorf("start part: %w", err)
		}
		rep.took[0] = time.Since(t0)
	}
	if p.parts.has(partWarm) {
		t0 := time.Now()
		if rep.warm, err = runWarmPart(ctx, ch, p, rng); err != nil {
			return fmt.Errorf("warm part: %w", err)
		}
		rep.took[1] = time.Since(t0)
	}
	if p.parts.has(partCells) {
		t0 := time.Now()
		results, rounds, retries, err := runCellsPart(ctx, ch, p, rng)
		if err != nil {
			return fmt.Errorf("cells part: %w", err)
		}
		cp := p.cells
		cp.rounds = rounds
		rep.cells, rep.retries = buildCells(cp, results), retries
		rep.took[2] = time.Since(t0)
	}
	if p.parts.has(partInpkg) {
		t0 := time.Now()
		if rep.inpkg, err = runInpkg(ctx, p.inpkg); err != nil {
			return fmt.Errorf("inpkg part: %w", err)
		}
		rep.took[3] = time.Since(t0)
	}
	rep.wall = time.Since(began)
	return rep.write(outDir, page)
}

// runCellsPart measures every cell of p.cells for p.cells.rounds rounds, fewer if the next
// round is not expected to end within p.cells.partCap. Within a round each cell configuration
// runs every variant once, in an order drawn from rng, so that the variants of a configuration
// are measured side by side and paired by round. It returns the results, the rounds run and
// the re-runs.
func runCellsPart(ctx context.Context, ch *child, p plan, rng *rand.Rand) (map[cellKey][]cellResult, int, int, error) {
	began := time.Now()
	cp := p.cells
	results := make(map[cellKey][]cellResult)
	q := &quietRunner{plan: cp, child: ch, budget: cp.retryBudget}
	total := cp.rounds * len(p.modes) * len(cp.delays) * len(cp.concs) * len(cp.variants)
	done, rounds := 0, 0
	for ; rounds < cp.rounds && another(began, rounds, cp.partCap); rounds++ {
		for _, spec := range cp.cells(p.modes, rng) {
			if err := ctx.Err(); err != nil {
				return nil, 0, 0, fmt.Errorf("interrupted: %w", err)
			}
			r, err := q.run(ctx, spec)
			if err != nil {
				return nil, 0, 0, fmt.Errorf("cell %s delay=%v c=%d %s: %w", spec.mode.name, spec.delay, spec.conc, spec.variant.name, err)
			}
			k := cellKey{spec.mode.name, spec.delay, spec.conc, spec.variant.name}
			results[k] = append(results[k], r)
			done++
			fmt.Fprintf(os.Stderr, "cells [%3d/%d %4.0fs] r%d %-6s d=%-3v c=%-3d %-15s %6.0f req/s p99 %8v conns/req %.3f err %d other CPU %3.0f%%\n",
				done, total, time.Since(began).Seconds(), rounds+1, spec.mode.name, spec.delay, spec.conc, spec.variant.name,
				r.RPS, r.P99.Round(10*time.Microsecond), r.ConnsPerReq, r.Errors, 100*r.OtherCPU)
		}
	}
	if rounds < cp.rounds {
		fmt.Fprintf(os.Stderr, "cells: stopped after %d of %d rounds, the next would end past %v\n", rounds, cp.rounds, cp.partCap)
	}
	return results, rounds, q.retries, nil
}

// another reports whether one more unit of work (a round, a repetition), expected to take as
// long as the average of the done units so far, would end within limit of began. The first
// always runs.
func another(began time.Time, done int, limit time.Duration) bool {
	if done == 0 {
		return true
	}
	return time.Since(began)*time.Duration(done+1)/time.Duration(done) <= limit
}

// cellKey identifies a cell across rounds.
type cellKey struct {
	mode    string
	delay   time.Duration
	conc    int
	variant string
}

// cells lists one round's cells in the order they run: per mode, delay and concurrency, every
// variant, in an order drawn from rng.
func (p cellPlan) cells(ms []mode, rng *rand.Rand) []cellSpec {
	var specs []cellSpec
	for _, m := range ms {
		for _, delay := range p.delays {
			for _, conc := range p.concs {
				for _, v := range shuffled(rng, p.variants) {
					specs = append(specs, cellSpec{mode: m, delay: delay, conc: conc, n: p.requests(conc), timeCap: p.timeCap, variant: v})
				}
			}
		}
	}
	return specs
}

// quietRunner runs cells, running a cell again while other processes were busy during it
// (cellPlan.noisyCPU, cellPlan.maxRetries), within a budget of time for all re-runs of the run.
type quietRunner struct {
	plan    cellPlan
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
		if best.OtherCPU <= q.plan.noisyCPU || attempt >= q.plan.maxRetries || q.budget <= 0 {
			return best, nil
		}
		q.retries++
		fmt.Fprintf(os.Stderr, "      other processes used %.0f%% of the CPU; running the cell again\n", 100*r.OtherCPU)
	}
}

// restrict applies the command line's narrowing to p: the parts, modes, variants,
// concurrencies and delays it names; an empty list keeps the plan's. It resolves each part's
// variants: the part's own unless variantList names some, and always the baseline and its A/A
// control. A name that matches nothing is an error. Any narrowing makes the run incomplete.
func (p *plan) restrict(partList, modeList, variantList, concList, delayList string) error {
	if partList+modeList+variantList+concList+delayList != "" {
		p.complete = false
	}
	if partList != "" {
		p.parts = 0
		for _, name := range strings.Split(partList, ",") {
			i := slices.IndexFunc(partNames(), func(n partName) bool { return n.name == name })
			if i < 0 {
				return fmt.Errorf("unknown part %q (want start, warm, cells or inpkg)", name)
			}
			p.parts |= partNames()[i].part
		}
	}
	if modeList != "" {
		var ms []mode
		for _, name := range strings.Split(modeList, ",") {
			i := slices.IndexFunc(modes(), func(m mode) bool { return m.name == name })
			if i < 0 {
				return fmt.Errorf("unknown mode %q", name)
			}
			ms = append(ms, modes()[i])
		}
		p.modes = ms
	}
	all := allVariants()
	pick := func(part partSet) []variant {
		var vs []variant
		for _, v := range all {
			if v.parts.has(part) {
				vs = append(vs, v)
			}
		}
		return vs
	}
	p.start.variants, p.warm.variants, p.cells.variants = pick(partStart), pick(partWarm), pick(partCells)
	if variantList != "" {
		named := []string{baseline, control}
		for _, name := range strings.Split(variantList, ",") {
			if !slices.ContainsFunc(all, func(v variant) bool { return v.name == name }) {
				return fmt.Errorf("unknown variant %q", name)
			}
			named = append(named, name)
		}
		var vs []variant
		for _, v := range all {
			if slices.Contains(named, v.name) {
				vs = append(vs, v)
			}
		}
		p.start.variants, p.warm.variants, p.cells.variants = vs, vs, vs
	}
	if concList != "" {
		var cs []int
		for _, f := range strings.Split(concList, ",") {
			c, err := strconv.Atoi(f)
			if err != nil || c < 1 {
				return fmt.Errorf("bad concurrency %q", f)
			}
			cs = append(cs, c)
		}
		p.start.concs, p.warm.concs, p.cells.concs = cs, cs, cs
	}
	if delayList != "" {
		var ds []time.Duration
		for _, f := range strings.Split(delayList, ",") {
			d, err := time.ParseDuration(f)
			if err != nil || d < 0 || d > maxDelay {
				return fmt.Errorf("bad delay %q (want 0s to %v)", f, maxDelay)
			}
			ds = append(ds, d)
		}
		p.start.delays, p.cells.delays = ds, ds
	}
	return nil
}
