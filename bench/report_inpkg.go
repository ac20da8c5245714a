package main

import (
	"fmt"
	"slices"
	"strings"
)

// writeInpkg writes the in-package benchmarks: per group, every variant's median ns/op and
// allocs/op over runs, and its ns/op ratio to the group's "raw", paired by run.
func (r *report) writeInpkg(b *strings.Builder) {
	res := r.inpkg
	b.WriteString("## In-package benchmarks\n\n")
	if res.skipped != "" {
		fmt.Fprintf(b, "Not run: %s.\n\n", res.skipped)
		return
	}
	r.writeInpkgTable(b)
}

// writeInpkgTable writes the in-package table alone (also used by the README text).
func (r *report) writeInpkgTable(b *strings.Builder) {
	res := r.inpkg
	groups, vs := res.groups()
	fmt.Fprintf(b, "`%s`: %d runs of the test binary, medians over runs; each ratio is to the variant %q of the same "+
		"benchmark in the same run, with its 95%% interval over runs (the run-to-run noise; the in-package benchmark "+
		"has no A/A control of its own).\n\n", res.command, res.runs, inpkgBase)
	others := slices.DeleteFunc(slices.Clone(vs), func(v string) bool { return v == inpkgBase })
	b.WriteString("| benchmark |")
	for _, v := range vs {
		fmt.Fprintf(b, " %s ns/op |", v)
	}
	for _, v := range others {
		fmt.Fprintf(b, " %s ÷ %s |", v, inpkgBase)
	}
	for _, v := range vs {
		fmt.Fprintf(b, " %s allocs/op |", v)
	}
	b.WriteString("\n|---|" + strings.Repeat("--:|", 2*len(vs)+len(others)) + "\n")
	nsOp := func(s benchSample) float64 { return s.nsOp }
	allocs := func(s benchSample) float64 { return s.allocsOp }
	for _, g := range groups {
		fmt.Fprintf(b, "| %s |", g)
		for _, v := range vs {
			fmt.Fprintf(b, " %.0f |", median(res.column(g+"/"+v, nsOp)))
		}
		for _, v := range others {
			fmt.Fprintf(b, " %s |", ratioEstimate(res.column(g+"/"+v, nsOp), res.column(g+"/"+inpkgBase, nsOp)))
		}
		for _, v := range vs {
			fmt.Fprintf(b, " %.1f |", median(res.column(g+"/"+v, allocs)))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}
