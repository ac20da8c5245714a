package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// writeInpkg writes the in-package benchmarks: per table and group, every variant's
// requests/s and allocations against the table's base, paired by run, beside the A/A
// control's.
func (r *report) writeInpkg(b *strings.Builder) {
	res := r.inpkg
	b.WriteString("## In-package benchmarks\n\n")
	if res.skipped != "" {
		fmt.Fprintf(b, "Not run: %s.\n\n", res.skipped)
		return
	}
	r.writeInpkgTable(b)
}

// inpkgNs and inpkgAllocs read one measurement of a sample.
func inpkgNs(s benchSample) float64     { return s.nsOp }
func inpkgAllocs(s benchSample) float64 { return s.allocsOp }

// speed estimates variant v's requests/s over base's in group g (base's ns/op over v's,
// paired by run).
func (res inpkgResult) speed(g, v, base string) estimate {
	return ratioEstimate(res.column(g+"/"+base, inpkgNs), res.column(g+"/"+v, inpkgNs))
}

// pooledSpeed estimates variant v's requests/s over base's, every group's runs pooled.
func (res inpkgResult) pooledSpeed(groups []string, v, base string) estimate {
	var logs []float64
	for _, g := range groups {
		bs, vs := res.column(g+"/"+base, inpkgNs), res.column(g+"/"+v, inpkgNs)
		for i := range min(len(bs), len(vs)) {
			if bs[i] > 0 && vs[i] > 0 {
				logs = append(logs, math.Log(bs[i]/vs[i]))
			}
		}
	}
	return logEstimate(logs)
}

// extraAllocs is v's median allocs/op minus base's in group g.
func (res inpkgResult) extraAllocs(g, v, base string) float64 {
	return median(res.column(g+"/"+v, inpkgAllocs)) - median(res.column(g+"/"+base, inpkgAllocs))
}

// writeInpkgTable writes the in-package tables alone (also used by the performance page).
func (r *report) writeInpkgTable(b *strings.Builder) {
	res := r.inpkg
	fmt.Fprintf(b, "`%s`: %d runs of the test binary, each with the variants in another order. Requests/s ratios are "+
		"the base's ns/op over the variant's, paired by run: geometric mean and 95%% interval over runs. The A/A "+
		"control (the base built again) shows the run's noise: ▼/▲ mark a ratio whose interval lies wholly "+
		"below/above the A/A's. Allocations: medians over runs, per request, the difference to the base.\n\n",
		res.command, res.runs)
	for _, tb := range inpkgTables {
		groups, vs := res.groups(tb.prefix)
		if len(groups) == 0 {
			continue
		}
		others := slices.DeleteFunc(slices.Clone(vs), func(v string) bool { return v == tb.base || v == tb.aa })
		fmt.Fprintf(b, "**%s** (base: %s)\n\n", tb.title, tb.base)
		fmt.Fprintf(b, "| benchmark | %s ns/op | A/A: %s req/s ÷ %s |", tb.base, tb.aa, tb.base)
		for _, v := range others {
			fmt.Fprintf(b, " %s req/s ÷ %s |", v, tb.base)
		}
		fmt.Fprintf(b, " %s allocs/op |", tb.base)
		for _, v := range append([]string{tb.aa}, others...) {
			fmt.Fprintf(b, " %s Δ allocs |", v)
		}
		b.WriteString("\n|---|" + strings.Repeat("--:|", 3+2*len(others)+1) + "\n")
		for _, g := range groups {
			aa := res.speed(g, tb.aa, tb.base)
			fmt.Fprintf(b, "| %s | %.0f | %s |", strings.TrimPrefix(g, tb.prefix), median(res.column(g+"/"+tb.base, inpkgNs)), aa)
			for _, v := range others {
				e := res.speed(g, v, tb.base)
				fmt.Fprintf(b, " %s%s |", e, e.mark(aa))
			}
			fmt.Fprintf(b, " %.1f |", median(res.column(g+"/"+tb.base, inpkgAllocs)))
			for _, v := range append([]string{tb.aa}, others...) {
				fmt.Fprintf(b, " %+.1f |", res.extraAllocs(g, v, tb.base))
			}
			b.WriteString("\n")
		}
		aa := res.pooledSpeed(groups, tb.aa, tb.base)
		fmt.Fprintf(b, "| pooled | | %s |", aa)
		for _, v := range others {
			e := res.pooledSpeed(groups, v, tb.base)
			fmt.Fprintf(b, " %s%s |", e, e.mark(aa))
		}
		b.WriteString(strings.Repeat(" |", 2+len(others)) + "\n\n")
	}
}

// inpkgFinding is the sentence of "What this run shows" on the in-package benchmarks.
func (r *report) inpkgFinding() string {
	res := r.inpkg
	tb := inpkgTables[0]
	groups, _ := res.groups(tb.prefix)
	var fx, aa, extra []float64
	for _, g := range groups {
		fx = append(fx, res.speed(g, "httpfx", tb.base).GM)
		aa = append(aa, res.speed(g, tb.aa, tb.base).GM)
		extra = append(extra, res.extraAllocs(g, "httpfx", tb.base))
	}
	pfx, paa := res.pooledSpeed(groups, "httpfx", tb.base), res.pooledSpeed(groups, tb.aa, tb.base)
	s := fmt.Sprintf("**In-package** (`go test -bench`, %d runs): against a transport with httpfx's settings and "+
		"bounds set net/http's way (%s), httpfx reaches %s× its requests/s per benchmark (the A/A control: %s×); "+
		"pooled %s against the A/A's %s; it allocates %s more per request.",
		res.runs, tb.base, span("%.2f", fx), span("%.2f", aa), pfx, paa, span("%+.1f", extra))
	if nc := inpkgTables[1]; len(res.samples) > 0 {
		if groups, _ := res.groups(nc.prefix); len(groups) > 0 {
			var parts []string
			for _, g := range groups {
				parts = append(parts, fmt.Sprintf("%s %.2f ms → %.2f ms", strings.TrimPrefix(g, nc.prefix),
					median(res.column(g+"/"+nc.base, inpkgNs))/1e6, median(res.column(g+"/cache", inpkgNs))/1e6))
			}
			s += " A request that needs a new TLS connection, without the session cache and with it: " + strings.Join(parts, ", ") + "."
		}
	}
	return s
}
