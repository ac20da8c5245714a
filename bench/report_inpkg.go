package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// writeInpkg writes the in-package benchmarks: per group, every variant's requests/s and
// allocations against rawtuned's, paired by run, beside the A/A control's.
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

// speed estimates variant v's requests/s over the base's in group g (the base's ns/op over
// v's, paired by run).
func (res inpkgResult) speed(g, v string) estimate {
	return ratioEstimate(res.column(g+"/"+inpkgBase, inpkgNs), res.column(g+"/"+v, inpkgNs))
}

// pooledSpeed estimates variant v's requests/s over the base's, every group's runs pooled.
func (res inpkgResult) pooledSpeed(groups []string, v string) estimate {
	var logs []float64
	for _, g := range groups {
		base, vs := res.column(g+"/"+inpkgBase, inpkgNs), res.column(g+"/"+v, inpkgNs)
		for i := range min(len(base), len(vs)) {
			if base[i] > 0 && vs[i] > 0 {
				logs = append(logs, math.Log(base[i]/vs[i]))
			}
		}
	}
	return logEstimate(logs)
}

// extraAllocs is v's median allocs/op minus the base's in group g.
func (res inpkgResult) extraAllocs(g, v string) float64 {
	return median(res.column(g+"/"+v, inpkgAllocs)) - median(res.column(g+"/"+inpkgBase, inpkgAllocs))
}

// writeInpkgTable writes the in-package table alone (also used by the performance page).
func (r *report) writeInpkgTable(b *strings.Builder) {
	res := r.inpkg
	groups, vs := res.groups()
	others := slices.DeleteFunc(slices.Clone(vs), func(v string) bool { return v == inpkgBase || v == inpkgAA })
	fmt.Fprintf(b, "`%s`: %d runs of the test binary, each with the variants in another order. Requests/s ratios are "+
		"%s's ns/op over the variant's, paired by run: geometric mean and 95%% interval over runs. The A/A control %s "+
		"(%s built again) shows the run's noise: ▼/▲ mark a ratio whose interval lies wholly below/above the A/A's. "+
		"Allocations: medians over runs, per request, the difference to %s.\n\n",
		res.command, res.runs, inpkgBase, inpkgAA, inpkgBase, inpkgBase)
	fmt.Fprintf(b, "| benchmark | %s ns/op | A/A: %s req/s ÷ %s |", inpkgBase, inpkgAA, inpkgBase)
	for _, v := range others {
		fmt.Fprintf(b, " %s req/s ÷ %s |", v, inpkgBase)
	}
	fmt.Fprintf(b, " %s allocs/op |", inpkgBase)
	for _, v := range append([]string{inpkgAA}, others...) {
		fmt.Fprintf(b, " %s Δ allocs |", v)
	}
	b.WriteString("\n|---|" + strings.Repeat("--:|", 3+2*len(others)+1) + "\n")
	for _, g := range groups {
		aa := res.speed(g, inpkgAA)
		fmt.Fprintf(b, "| %s | %.0f | %s |", g, median(res.column(g+"/"+inpkgBase, inpkgNs)), aa)
		for _, v := range others {
			e := res.speed(g, v)
			fmt.Fprintf(b, " %s%s |", e, e.mark(aa))
		}
		fmt.Fprintf(b, " %.1f |", median(res.column(g+"/"+inpkgBase, inpkgAllocs)))
		for _, v := range append([]string{inpkgAA}, others...) {
			fmt.Fprintf(b, " %+.1f |", res.extraAllocs(g, v))
		}
		b.WriteString("\n")
	}
	aa := res.pooledSpeed(groups, inpkgAA)
	fmt.Fprintf(b, "| pooled | | %s |", aa)
	for _, v := range others {
		e := res.pooledSpeed(groups, v)
		fmt.Fprintf(b, " %s%s |", e, e.mark(aa))
	}
	b.WriteString(strings.Repeat(" |", 2+len(others)) + "\n\n")
}

// inpkgFinding is the sentence of "What this run shows" on the in-package benchmarks.
func (r *report) inpkgFinding() string {
	res := r.inpkg
	groups, _ := res.groups()
	var fx, aa, extra []float64
	for _, g := range groups {
		fx = append(fx, res.speed(g, "httpfx").GM)
		aa = append(aa, res.speed(g, inpkgAA).GM)
		extra = append(extra, res.extraAllocs(g, "httpfx"))
	}
	pfx, paa := res.pooledSpeed(groups, "httpfx"), res.pooledSpeed(groups, inpkgAA)
	s := fmt.Sprintf("**In-package** (`go test -bench`, %d runs): httpfx reaches %s× %s's requests/s per benchmark "+
		"(the A/A control: %s×); pooled %s against the A/A's %s; it allocates %s more per request.",
		res.runs, span("%.2f", fx), inpkgBase, span("%.2f", aa), pfx, paa, span("%+.1f", extra))
	if _, vs := res.groups(); slices.Contains(vs, inpkgBare) {
		s += fmt.Sprintf(" Its transport alone (%s: the same *http.Transport under a plain http.Client, without httpfx's "+
			"tracking of each request) reads %s pooled: the difference is what the tracking costs (admission, "+
			"deadlines, health checks, the body's end).", inpkgBare, res.pooledSpeed(groups, inpkgBare))
	}
	return s
}
