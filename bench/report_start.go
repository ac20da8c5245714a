package main

import (
	"fmt"
	"strings"
	"time"
)

// startConfig is one configuration of the start part.
type startConfig struct {
	m     mode
	delay time.Duration
	conc  int
}

// startConfigs lists the start part's configurations in report order.
func (r *report) startConfigs() []startConfig {
	var cs []startConfig
	for _, m := range r.plan.modes {
		for _, d := range r.plan.start.delays {
			for _, c := range r.plan.start.concs {
				cs = append(cs, startConfig{m, d, c})
			}
		}
	}
	return cs
}

// httpfxVariants are the variants of vs whose p99 ratio the performance page shows: httpfx's own.
func httpfxVariants(vs []variant) []variant {
	var out []variant
	for _, v := range vs {
		if strings.HasPrefix(v.name, "httpfx") {
			out = append(out, v)
		}
	}
	return out
}

// writeStart writes the start part. full selects the report's form (every measurement per
// configuration) over the performance page's (one row per configuration).
func (r *report) writeStart(b *strings.Builder, full bool) {
	sp := r.plan.start
	if full {
		fmt.Fprintf(b, "## Cold start: the first burst\n\n"+
			"A new client, its start step if it has one (an fx app's start: what a variant prepares before traffic, "+
			"such as connections, is timed in \"start\"), then one burst: all callers released at once, one request "+
			"each. %d repetitions; each runs every configuration, its variants in a shuffled order, so the p99 ratios "+
			"are paired by repetition. p50 and p99 are medians over repetitions of each burst's; conns/caller counts "+
			"what the server accepted from the client's build to the end of the burst.\n\n", sp.reps)
	}
	fx := httpfxVariants(sp.variants)
	b.WriteString("## Cold start: first-burst p50 / p99 latency (ms) · connections per caller\n\n")
	b.WriteString("| mode | delay | callers |")
	for _, v := range sp.variants {
		fmt.Fprintf(b, " %s |", v.name)
	}
	for _, v := range fx {
		fmt.Fprintf(b, " %s p99 ÷ %s |", v.name, baseline)
	}
	b.WriteString(" A/A p99 ÷ " + baseline + " |\n|---|---|--:|" + strings.Repeat("--:|", len(sp.variants)+len(fx)+1) + "\n")
	for _, c := range r.startConfigs() {
		s := summarizeBursts(r.start, c.m.name, c.delay, c.conc, sp.variants)
		aa := s[control].p99Ratio
		fmt.Fprintf(b, "| %s | %v | %d |", c.m.name, c.delay, c.conc)
		for _, v := range sp.variants {
			a := s[v.name]
			fmt.Fprintf(b, " %.1f / %.1f · %.2f |", ms(a.p50), ms(a.p99), a.connsPerCall)
		}
		for _, v := range fx {
			e := s[v.name].p99Ratio
			fmt.Fprintf(b, " %s%s |", e, e.mark(aa))
		}
		fmt.Fprintf(b, " %s |\n", aa)
	}
	b.WriteString("\n")
	if !full {
		return
	}
	b.WriteString("### Cold start: every measurement\n\n")
	b.WriteString("| mode | delay | callers | variant | proto | start ms | conns at start | conns/caller | p50 ms | p99 ms | p99 ÷ " + baseline + " | errors |\n")
	b.WriteString("|---|---|--:|---|---|--:|--:|--:|--:|--:|--:|---|\n")
	for _, c := range r.startConfigs() {
		s := summarizeBursts(r.start, c.m.name, c.delay, c.conc, sp.variants)
		aa := s[control].p99Ratio
		for _, v := range sp.variants {
			a := s[v.name]
			start := "–"
			if a.hasStartPhase {
				start = fmt.Sprintf("%.1f", ms(a.start))
			}
			fmt.Fprintf(b, "| %s | %v | %d | %s | %s | %s | %.0f | %.2f | %.2f | %.2f | %s%s | %s |\n",
				c.m.name, c.delay, c.conc, v.name, strings.Join(a.protos, ","), start, a.startConns, a.connsPerCall,
				ms(a.p50), ms(a.p99), a.p99Ratio, a.p99Ratio.mark(aa), errText(a.errors, a.firstErr))
		}
	}
	b.WriteString("\n")
}
