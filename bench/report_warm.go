package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// writeWarm writes the steady-state part. full selects the report's form (intervals for
// every ratio, every variant's measurements per group) over the performance page's.
func (r *report) writeWarm(b *strings.Builder, full bool) {
	wp := r.plan.warm
	if full {
		fmt.Fprintf(b, "## Steady state (warm clients)\n\n"+
			"Per mode and number of callers (a group), up to %d epochs (none started after %v): every variant is built, "+
			"started and warmed with max(%d, 4×callers) requests, then %d blocks run (none started after %v), each one "+
			"segment of every variant in an order drawn anew: %d requests, none started after %v. Ratios pair each "+
			"segment with raw-tuned's of the same block; the geometric mean and its interval are taken over the "+
			"epochs' means, so that they include how much two builds of the same client differ. Server delay 0.\n\n",
			wp.epochs, wp.groupCap, wp.warmN, wp.blocks, wp.groupCap, wp.segN, wp.segCap)
	}
	others := compared(wp.variants)
	fmt.Fprintf(b, "## Steady state: requests/s relative to %s\n\n", baseline)
	b.WriteString("| mode | callers | epochs / blocks | " + baseline + " req/s | A/A: " + control + " |")
	for _, v := range others {
		fmt.Fprintf(b, " %s |", v.name)
	}
	b.WriteString("\n|---|--:|--:|--:|--:|" + strings.Repeat("--:|", len(others)) + "\n")
	for _, g := range r.warm {
		s := g.summary()
		aa := s[control].rpsRatio
		fmt.Fprintf(b, "| %s | %d | %d / %d | %.0f | %s |", g.mode.name, g.conc, g.epochs, g.blocks, s[baseline].rps, aa)
		for _, v := range others {
			e := s[v.name].rpsRatio
			if full {
				fmt.Fprintf(b, " %s%s |", e, e.mark(aa))
			} else {
				fmt.Fprintf(b, " %s |", e.short(aa))
			}
		}
		b.WriteString("\n")
	}
	if len(r.warm) > 1 {
		aa := pooledRatio(r.warm, control, baseline, segRPS)
		epochs, blocks := 0, 0
		for _, g := range r.warm {
			epochs, blocks = epochs+g.epochs, blocks+g.blocks
		}
		fmt.Fprintf(b, "| all, pooled | | %d / %d | | %s |", epochs, blocks, aa)
		for _, v := range others {
			// Pooled only where the groups measure the same kind of cost: not for the
			// clients whose ratio depends on the mode (default, cleanhttp churn over TLS).
			if !slices.Contains(costVariants(wp.variants), v.name) {
				b.WriteString(" – |")
				continue
			}
			e := pooledRatio(r.warm, v.name, baseline, segRPS)
			fmt.Fprintf(b, " %s%s |", e, e.mark(aa)) // with its interval in both forms: the headline
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")

	cost := costVariants(wp.variants)
	fmt.Fprintf(b, "## Steady state: cost per request against %s\n\n", baseline)
	b.WriteString("| mode | callers | " + baseline + " allocs/req |")
	for _, v := range cost {
		fmt.Fprintf(b, " %s Δ allocs/req |", v)
	}
	b.WriteString(" A/A Δ allocs/req | " + baseline + " client CPU µs/req |")
	for _, v := range cost {
		fmt.Fprintf(b, " %s CPU ÷ %s |", v, baseline)
	}
	b.WriteString(" A/A CPU ÷ " + baseline + " |\n|---|--:|--:|" + strings.Repeat("--:|", 2*len(cost)+3) + "\n")
	for _, g := range r.warm {
		s := g.summary()
		base, aa := s[baseline], s[control]
		fmt.Fprintf(b, "| %s | %d | %.1f |", g.mode.name, g.conc, base.allocsPerReq)
		for _, v := range cost {
			fmt.Fprintf(b, " %s |", delta(s[v]))
		}
		fmt.Fprintf(b, " %s | %.1f |", delta(aa), us(base.cpuPerReq))
		for _, v := range cost {
			e := s[v].cpuRatio
			fmt.Fprintf(b, " %s%s |", e, e.mark(aa.cpuRatio))
		}
		fmt.Fprintf(b, " %s |\n", aa.cpuRatio)
	}
	b.WriteString("\n")
	if !full {
		return
	}
	b.WriteString("### Steady state: every measurement (medians over segments)\n\n")
	for _, g := range r.warm {
		s := g.summary()
		fmt.Fprintf(b, "#### %s (%s), %d callers: %d epochs, %d blocks in %.0fs\n\n", g.mode.name, g.mode.title, g.conc, g.epochs, g.blocks, g.elapsed.Seconds())
		b.WriteString("| variant | req/s | ÷ " + baseline + " | allocs/req | Δ allocs/req | client CPU µs/req | CPU ÷ " + baseline +
			" | p50 ms | p99 ms | conns/req | other CPU | errors |\n")
		b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
		for _, v := range g.variants {
			a := s[v.name]
			fmt.Fprintf(b, "| %s | %.0f | %s | %.1f | %s | %.1f | %s | %.3f | %.3f | %.4f | %.0f%% | %s |\n",
				v.name, a.rps, a.rpsRatio, a.allocsPerReq, delta(a), us(a.cpuPerReq), a.cpuRatio,
				ms(a.p50), ms(a.p99), a.connsPerReq, 100*a.otherCPU, errText(a.errors, a.firstErr))
		}
		b.WriteString("\n")
	}
}

// delta formats a's difference of allocations per request to the baseline's, with its
// 95% half-width.
func delta(a warmAgg) string {
	switch {
	case math.IsNaN(a.allocsDelta):
		return "–"
	case math.IsNaN(a.allocsHalf):
		return fmt.Sprintf("%+.1f", a.allocsDelta)
	default:
		return fmt.Sprintf("%+.1f (±%.1f)", a.allocsDelta, a.allocsHalf)
	}
}

// costVariants are the variants of the cost table: httpfx, and raw-bare (the cheapest raw
// client) if it ran.
func costVariants(vs []variant) []string {
	var out []string
	for _, name := range []string{"httpfx", "raw-bare"} {
		if slices.ContainsFunc(vs, func(v variant) bool { return v.name == name }) {
			out = append(out, name)
		}
	}
	return out
}
