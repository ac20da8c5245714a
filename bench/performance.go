package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// page renders the performance page (docs/performance.md for a full run) from this run: what
// was measured, the commands, how to read the figures, what this run shows (sentences computed
// from the data) and the tables, each with the A/A control beside it. links holds the paths,
// relative to the page, of bench/README.md, the report and the chart.
func (r *report) page(links pageLinks) string {
	var b strings.Builder
	p := r.plan
	b.WriteString("# Performance\n\n")
	fmt.Fprintf(&b, "Measured with the bench program in [`bench/`](%s), its own Go module (it compares "+
		"against `github.com/hashicorp/go-cleanhttp`, which the library must not depend on). A loopback server runs in "+
		"a separate process in three modes (plain HTTP/1.1; TLS offering HTTP/2; TLS offering HTTP/1.1 only), with no "+
		"delay and with 5 ms per request standing in for a real upstream. The clients:\n\n", links.bench)
	for _, v := range allVariants() {
		if r.measured(v.name) && !v.extra {
			fmt.Fprintf(&b, "- **%s**: %s;\n", v.name, v.desc)
		}
	}
	b.WriteString("\nTo reproduce:\n\n```sh\n" +
		"cd bench && go run . -quick         # under a minute: every part, small counts (writes bench/results/quick/)\n" +
		fmt.Sprintf("cd bench && go run .                # %s: the run below; rewrites bench/results/ and this page\n", about(r.wall)) +
		"cd bench && go run . -parts warm    # the steady state alone (-blocks 60 for more blocks)\n" +
		"go test -bench . -benchmem -run '^$' .   # the in-package benchmarks\n```\n\n")
	fmt.Fprintf(&b, "The %s run below: %s, a shared machine, client and server on the same cores. %s. "+
		"[The report](%s) has every measurement (p50/p99, connections, allocations and CPU per "+
		"request, TIME_WAIT, errors, and how busy other processes kept the machine); "+
		"this page is written by the same run.\n\n", p.name, r.machine(), r.timing(), links.report)

	b.WriteString("## How to read it\n\n" +
		"- **Noise is measured, not assumed.** Client and server share the machine's cores, and other processes may " +
		"use them too: two identical clients measured one after the other can differ by more than the differences " +
		"of interest. Every part therefore runs the **A/A control** `raw-tuned-b`, a second `raw-tuned` built the " +
		"same way, and pairs every variant with `raw-tuned` measured at nearly the same time (same round, block or " +
		"repetition, in shuffled order; in the steady state, with clients built anew for every epoch).\n" +
		"- **Ratios** are geometric means of those paired ratios, with their 95% confidence interval in parentheses " +
		"(a t-interval over the log ratios). The A/A's ratio and interval are printed beside every ratio: a ratio " +
		"whose interval overlaps the A/A's is **within noise**. ▼ marks one wholly below the A/A's interval, ▲ one " +
		"wholly above (for req/s ▼ is worse; for latency and CPU ▼ is better). No mark: within noise.\n" +
		"- **Steady state** (warm clients, many short shuffled segments) is the per-request cost; **cold start** (a new " +
		"client and one burst of concurrent first requests) is what the first traffic after a deploy sees; the **cold " +
		"cells** mix both, a new client per cell, as a user trying clients out would.\n\n")

	b.WriteString("## What this run shows\n\n")
	for _, s := range r.findings() {
		b.WriteString("- " + s + "\n")
	}
	b.WriteString("\n")
	if p.parts.has(partWarm) {
		r.writeWarm(&b, false)
	}
	if p.parts.has(partStart) {
		r.writeStart(&b, false)
	}
	if p.parts.has(partCells) {
		fmt.Fprintf(&b, "![requests/s and p99 against concurrency, one line per client, per mode](%s)\n\n", links.chart)
		r.writeCells(&b, false)
	}
	if p.parts.has(partInpkg) && r.inpkg.skipped == "" {
		b.WriteString("## In-package benchmarks\n\n")
		r.writeInpkgTable(&b)
	}
	return b.String()
}

// findings are the sentences of the page's "What this run shows", computed from the data.
func (r *report) findings() []string {
	var out []string
	if r.plan.parts.has(partWarm) && len(r.warm) > 0 {
		out = append(out, r.warmFindings()...)
	}
	if r.plan.parts.has(partStart) {
		out = append(out, r.startFindings()...)
	}
	if r.plan.parts.has(partCells) {
		out = append(out, r.cellFindings()...)
	}
	if r.plan.parts.has(partInpkg) && r.inpkg.skipped == "" {
		out = append(out, r.inpkgFinding())
	}
	out = append(out, r.noiseFinding(), r.errorFinding())
	return out
}

// span formats the range of xs with format f as "a–b", or "a" when equal.
func span(f string, xs []float64) string {
	if len(xs) == 0 {
		return "–"
	}
	lo, hi := slices.Min(xs), slices.Max(xs)
	a, b := fmt.Sprintf(f, lo), fmt.Sprintf(f, hi)
	if a == b {
		return a
	}
	return a + " to " + b
}

// halfWidth is the relative half-width of e's interval, in percent.
func halfWidth(e estimate) float64 { return 100 * (e.Hi - e.Lo) / 2 / e.GM }

func (r *report) warmFindings() []string {
	var fxR, aaR, dA, aaD, cpu, aaCPU, aaW []float64
	var below, above []string
	within := 0
	for _, g := range r.warm {
		s := g.summary()
		fx, aa := s["httpfx"], s[control]
		fxR, aaR = append(fxR, fx.rpsRatio.GM), append(aaR, aa.rpsRatio.GM)
		dA, aaD = append(dA, fx.allocsDelta), append(aaD, aa.allocsDelta)
		cpu, aaCPU = append(cpu, fx.cpuRatio.GM), append(aaCPU, aa.cpuRatio.GM)
		if aa.rpsRatio.ok() {
			aaW = append(aaW, halfWidth(aa.rpsRatio))
		}
		where := fmt.Sprintf("%s with %d callers (%s)", g.mode.name, g.conc, fx.rpsRatio)
		switch fx.rpsRatio.mark(aa.rpsRatio) {
		case "":
			within++
		case " ▼":
			below = append(below, where)
		default:
			above = append(above, where)
		}
	}
	s := fmt.Sprintf("**Steady state.** httpfx reaches %s× raw-tuned's requests/s over the %d groups (mode × callers); "+
		"%d of %d are within noise: the A/A control itself reads %s×, with intervals of ±%.1f%% to ±%.1f%%.",
		span("%.2f", fxR), len(r.warm), within, len(r.warm), span("%.2f", aaR), minOr0(aaW), maxOr0(aaW))
	if len(below) > 0 {
		s += " Below the noise: " + strings.Join(below, "; ") + "."
	}
	if len(r.warm) > 1 {
		fx, aa := pooledRatio(r.warm, "httpfx", baseline, segRPS), pooledRatio(r.warm, control, baseline, segRPS)
		verdict := "within noise"
		switch fx.mark(aa) {
		case " ▼":
			verdict = "below the A/A's interval"
		case " ▲":
			verdict = "above the A/A's interval"
		}
		one := "includes"
		if fx.ok() && (fx.Hi < 1 || fx.Lo > 1) {
			one = "excludes"
		}
		s += fmt.Sprintf(" Pooled over the groups (every epoch of every group), httpfx reads %s against the A/A's %s: %s "+
			"by the overlap rule; httpfx's own interval %s 1.00.", fx, aa, verdict, one)
	}
	if len(above) > 0 {
		s += " Above it: " + strings.Join(above, "; ") + "."
	}
	s2 := fmt.Sprintf("**Cost per request.** httpfx allocates %s more per request than raw-tuned (the A/A: %s) and uses "+
		"%s× its client CPU per request (the A/A: %s×).",
		span("%+.1f", dA), span("%+.1f", aaD), span("%.2f", cpu), span("%.2f", aaCPU))
	out := []string{s, s2}
	if slices.ContainsFunc(r.plan.warm.variants, func(v variant) bool { return v.name == "raw-bare" }) {
		var rps, allocs, cpuR []float64
		var parts []string
		for _, g := range r.warm {
			e := g.pair("httpfx", "raw-bare", segRPS)
			d, half := g.diff("httpfx", "raw-bare", segAllocs)
			c := g.pair("httpfx", "raw-bare", segCPU)
			rps, allocs, cpuR = append(rps, e.GM), append(allocs, d), append(cpuR, c.GM)
			parts = append(parts, fmt.Sprintf("%s %d: %s, %+.1f (±%.1f), %s", g.mode.name, g.conc, e, d, half, c))
		}
		out = append(out, fmt.Sprintf("**Against raw-bare**, raw-tuned without a response-header timeout or a request "+
			"timeout (the cheapest pooled client; paired by block, no A/A of its own): httpfx reaches %s× its req/s, "+
			"allocates %s more per request and uses %s× its client CPU per request (per group, req/s ratio, Δ allocs, "+
			"CPU ratio: %s).", span("%.2f", rps), span("%+.1f", allocs), span("%.2f", cpuR), strings.Join(parts, "; ")))
	}
	return out
}

func (r *report) startFindings() []string {
	sp := r.plan.start
	if len(sp.concs) == 0 {
		return nil
	}
	top := slices.Max(sp.concs)
	var lines []string
	for _, c := range r.startConfigs() {
		if c.conc != top {
			continue
		}
		s := summarizeBursts(r.start, c.m.name, c.delay, c.conc, sp.variants)
		fx, base, aa := s["httpfx"], s[baseline], s[control]
		lines = append(lines, fmt.Sprintf("\n  - %s, delay %v: httpfx %.2f connections per caller, p99 %.1f ms; raw-tuned %.2f, %.1f ms "+
			"(A/A: raw-tuned-b %.2f, %.1f ms); httpfx's p99 ÷ raw-tuned's %s, the A/A's %s",
			c.m.name, c.delay, fx.connsPerCall, ms(fx.p99), base.connsPerCall, ms(base.p99), aa.connsPerCall, ms(aa.p99),
			fx.p99Ratio, aa.p99Ratio))
	}
	out := []string{fmt.Sprintf("**Cold start**, the first burst of %d concurrent callers on a new client:%s", top, strings.Join(lines, ";"))}
	// Variants that open connections before the burst (pre-warming) get a sentence of their own.
	for _, v := range sp.variants {
		var at []string
		for _, c := range r.startConfigs() {
			a := summarizeBursts(r.start, c.m.name, c.delay, c.conc, sp.variants)
			aa := a[control].p99Ratio
			if x := a[v.name]; x.startConns > 0 {
				at = append(at, fmt.Sprintf("%s %v %d callers: %.0f at start in %.1f ms, p99 %.1f ms, %s× raw-tuned's%s",
					c.m.name, c.delay, c.conc, x.startConns, ms(x.start), ms(x.p99), x.p99Ratio, x.p99Ratio.mark(aa)))
			}
		}
		if len(at) > 0 {
			out = append(out, fmt.Sprintf("**%s** opens connections before the first request: %s.", v.name, strings.Join(at, "; ")))
		}
	}
	return out
}

func (r *report) cellFindings() []string {
	cp := r.cells.plan
	var worst []string
	for _, v := range compared(cp.variants) {
		if v.extra {
			continue
		}
		lo, where := math.Inf(1), ""
		for _, m := range r.plan.modes {
			for _, d := range cp.delays {
				for _, c := range cp.concs {
					k := cellKey{m.name, d, c, v.name}
					e := r.cells.paired(k, baseline, cellRPS)
					if e.GM < lo {
						lo = e.GM
						where = fmt.Sprintf("%s, %v, %d callers: %s; A/A %s", m.name, d, c, e, r.cells.aa(k, cellRPS))
					}
				}
			}
		}
		if !math.IsInf(lo, 1) {
			worst = append(worst, fmt.Sprintf("%s %.2f× (%s)", v.name, lo, where))
		}
	}
	out := []string{"**Cold cells**, the lowest requests/s ratio to raw-tuned of each client over every cell: " + strings.Join(worst, "; ") + "."}
	rows := r.barRows()
	var met, lenient, coldStart int
	for _, row := range rows {
		met += b2i(row.met(false, false))
		lenient += b2i(row.met(true, false))
		coldStart += b2i(row.met(true, true))
	}
	out = append(out, fmt.Sprintf("**The bar** (httpfx zero-config: req/s ≥ %.2f× the best client's, p99 ≤ %.2f× the best, ≤ %.2f new "+
		"connections per request, no errors) is met in %d of %d cold cells; in %d when misses within the A/A noise are "+
		"not counted; in %d when, besides, connections are counted beyond the cold start's one per caller.",
		barRPS, barP99, barConns, met, len(rows), lenient, coldStart))
	return out
}

// noiseFinding compares the A/A intervals of the parts.
func (r *report) noiseFinding() string {
	var parts []string
	if r.plan.parts.has(partCells) {
		var w []float64
		for _, m := range r.plan.modes {
			for _, d := range r.cells.plan.delays {
				for _, c := range r.cells.plan.concs {
					if e := r.cells.aa(cellKey{m.name, d, c, baseline}, cellRPS); e.ok() {
						w = append(w, halfWidth(e))
					}
				}
			}
		}
		if len(w) > 0 {
			parts = append(parts, fmt.Sprintf("±%.0f%% in the cold cells (median; widest ±%.0f%%, %d rounds)", median(w), slices.Max(w), r.cells.plan.rounds))
		}
	}
	if r.plan.parts.has(partWarm) {
		var w []float64
		for _, g := range r.warm {
			if e := g.summary()[control].rpsRatio; e.ok() {
				w = append(w, halfWidth(e))
			}
		}
		if len(w) > 0 {
			parts = append(parts, fmt.Sprintf("±%.1f%% in the steady state (median; widest ±%.1f%%)", median(w), slices.Max(w)))
		}
	}
	if len(parts) == 0 {
		return "**Noise.** One round: no intervals; rerun with more rounds or blocks to tell signal from noise."
	}
	return "**Noise.** The A/A control's 95% interval of req/s is " + strings.Join(parts, " and ") +
		": differences smaller than that are not shown by this run."
}

// errorFinding totals the errors of every variant over every part.
func (r *report) errorFinding() string {
	errs := make(map[string]int)
	for k, rs := range r.start {
		for _, x := range rs {
			errs[k.variant] += x.errors
		}
	}
	for _, g := range r.warm {
		for name, segs := range g.segs {
			for _, s := range segs {
				errs[name] += s.errors
			}
		}
	}
	for k, a := range r.cells.agg {
		errs[k.variant] += a.Errors
	}
	var bad []string
	for _, v := range allVariants() {
		if errs[v.name] > 0 {
			bad = append(bad, fmt.Sprintf("%s %d", v.name, errs[v.name]))
		}
	}
	if len(bad) == 0 {
		return "**Errors:** none, in any part, for any client."
	}
	return "**Errors:** " + strings.Join(bad, ", ") + " (the report has the first error of each)."
}

// about formats a wall time for the reproduce block: "about 9 minutes", "under a minute".
func about(d time.Duration) string {
	if d < time.Minute {
		return "under a minute"
	}
	return fmt.Sprintf("about %d minutes", int(math.Round(d.Minutes())))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func minOr0(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Min(xs)
}

func maxOr0(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Max(xs)
}
