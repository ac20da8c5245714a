package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// The bar httpfx zero-config is held to, per cold cell.
const (
	barRPS      = 0.95 // req/s at least this share of the best variant's
	barP99      = 1.10 // p99 at most this multiple of the best variant's
	barConns    = 0.01 // new connections per request at most this ...
	barPoolSize = 512  // ... in cells whose concurrency fits the default pool
)

// cellsData is the cells part: every round's results and their summary.
type cellsData struct {
	plan    cellPlan
	results map[cellKey][]cellResult // one per round, in round order
	agg     map[cellKey]agg
}

// agg is one cell summarised over rounds: medians of the measurements, totals of errors.
type agg struct {
	Rounds         int
	RPS            float64
	P50, P99       time.Duration
	ConnsPerReq    float64
	ExcessPerReq   float64 // connections beyond one per caller (the cold start), per request
	AllocsPerReq   float64
	ClientCPUPerRq time.Duration
	ServerCPUPerRq time.Duration
	TWClient       float64
	TWServer       float64
	Sent           float64 // median requests sent per round
	Errors         int     // over all rounds
	FirstErr       string
	Protos         []string
	Leftover       int     // rounds in which the server still saw connections after close
	OtherCPU       float64 // share of host CPU used by other processes during the load
}

// OK reports whether the cell has any successful requests to compare.
func (a agg) OK() bool { return a.RPS > 0 }

func buildCells(cp cellPlan, results map[cellKey][]cellResult) cellsData {
	c := cellsData{plan: cp, results: results, agg: make(map[cellKey]agg)}
	for k, rs := range results {
		a := agg{Rounds: len(rs)}
		var rps, conns, excess, allocs, twc, tws, sent, other []float64
		var p50, p99, ccpu, scpu []time.Duration
		for _, r := range rs {
			n := r.OK + r.Errors
			rps = append(rps, r.RPS)
			p50 = append(p50, r.P50)
			p99 = append(p99, r.P99)
			conns = append(conns, r.ConnsPerReq)
			ex := 0.0
			if n > 0 {
				ex = float64(max(0, r.NewConns-int64(k.conc))) / float64(n)
			}
			excess = append(excess, ex)
			allocs = append(allocs, r.AllocsPerReq)
			ccpu = append(ccpu, r.ClientCPUPerRq)
			scpu = append(scpu, r.ServerCPUPerRq)
			twc = append(twc, float64(r.TWClient))
			tws = append(tws, float64(r.TWServer))
			sent = append(sent, float64(n))
			other = append(other, r.OtherCPU)
			a.Errors += r.Errors
			if a.FirstErr == "" {
				a.FirstErr = r.FirstErr
			}
			for _, pr := range r.Protos {
				if !slices.Contains(a.Protos, pr) {
					a.Protos = append(a.Protos, pr)
				}
			}
			if r.Leftover > 0 {
				a.Leftover++
			}
		}
		slices.Sort(a.Protos)
		a.RPS, a.ConnsPerReq, a.ExcessPerReq, a.AllocsPerReq = median(rps), median(conns), median(excess), median(allocs)
		a.TWClient, a.TWServer, a.Sent, a.OtherCPU = median(twc), median(tws), median(sent), median(other)
		a.P50, a.P99, a.ClientCPUPerRq, a.ServerCPUPerRq = median(p50), median(p99), median(ccpu), median(scpu)
		c.agg[k] = a
	}
	return c
}

// paired estimates the ratio of f over the rounds of cell k to f over the same rounds of
// variant other in the same configuration.
func (c cellsData) paired(k cellKey, other string, f func(cellResult) float64) estimate {
	o := k
	o.variant = other
	var num, den []float64
	for _, r := range c.results[k] {
		num = append(num, f(r))
	}
	for _, r := range c.results[o] {
		den = append(den, f(r))
	}
	return ratioEstimate(num, den)
}

func cellRPS(r cellResult) float64 { return r.RPS }
func cellP99(r cellResult) float64 { return float64(r.P99) }

// aa is the A/A estimate of f in the configuration of k: control over baseline.
func (c cellsData) aa(k cellKey, f func(cellResult) float64) estimate {
	k.variant = control
	return c.paired(k, baseline, f)
}

// best returns the compared variant (not a prototype, not the control) with the highest
// median req/s and the one with the lowest median p99 in a cell configuration.
func (c cellsData) best(m mode, delay time.Duration, conc int) (rps, p99 string) {
	var bestRPS float64
	bestP99 := time.Duration(math.MaxInt64)
	for _, v := range c.plan.variants {
		a, ok := c.agg[cellKey{m.name, delay, conc, v.name}]
		if !ok || v.extra || v.control || !a.OK() {
			continue
		}
		if a.RPS > bestRPS {
			bestRPS, rps = a.RPS, v.name
		}
		if a.P99 < bestP99 {
			bestP99, p99 = a.P99, v.name
		}
	}
	return rps, p99
}

// writeCells writes the cells part: the ratios to raw-tuned, the bar check and, in the full
// report, every measurement. full selects the report's form (intervals everywhere) over the
// performance page's (ratios with marks, the A/A interval beside them).
func (r *report) writeCells(b *strings.Builder, full bool) {
	cp := r.cells.plan
	if full {
		fmt.Fprintf(b, "## Cold cells\n\n"+
			"Each cell builds a new client, runs its callers over max(%d, %d×concurrency) requests (at most %d; none "+
			"started after %v), and closes it. %d round(s); within a round every configuration runs its variants in a "+
			"shuffled order. A cell during which other processes used more than %.0f%% of the CPU was run again (at most %d "+
			"times, %v in all; the quietest attempt is kept): %d re-runs. Modes %s; delays %v; concurrencies %v.\n\n",
			cp.minN, cp.perConc, cp.maxN, cp.timeCap, cp.rounds, 100*cp.noisyCPU, cp.maxRetries, cp.retryBudget, r.retries,
			strings.Join(modeNames(r.plan.modes), ", "), cp.delays, cp.concs)
	}
	r.writeCellRatios(b, full)
	r.writeBar(b)
	if full {
		r.writeCellDetails(b)
	}
}

// writeCellRatios writes req/s of every variant relative to the baseline, with the A/A
// control's ratio and interval in each row.
func (r *report) writeCellRatios(b *strings.Builder, full bool) {
	cp := r.cells.plan
	others := compared(cp.variants)
	fmt.Fprintf(b, "## Cold cells: requests/s relative to %s\n\n", baseline)
	b.WriteString("| mode | delay | conc | " + baseline + " req/s | A/A: " + control + " |")
	for _, v := range others {
		fmt.Fprintf(b, " %s |", v.name)
	}
	b.WriteString("\n|---|---|--:|--:|--:|" + strings.Repeat("--:|", len(others)) + "\n")
	for _, m := range r.plan.modes {
		for _, d := range cp.delays {
			for _, c := range cp.concs {
				k := cellKey{m.name, d, c, baseline}
				aa := r.cells.aa(k, cellRPS)
				fmt.Fprintf(b, "| %s | %v | %d | %.0f | %s |", m.name, d, c, r.cells.agg[k].RPS, aa)
				for _, v := range others {
					k.variant = v.name
					e := r.cells.paired(k, baseline, cellRPS)
					if full {
						fmt.Fprintf(b, " %s%s |", e, e.mark(aa))
					} else {
						fmt.Fprintf(b, " %s |", e.short(aa))
					}
				}
				b.WriteString("\n")
			}
		}
	}
	b.WriteString("\n")
}

// barRow is httpfx's bar check in one cell configuration.
type barRow struct {
	m                mode
	delay            time.Duration
	conc             int
	a                agg
	bestRPS, bestP99 string
	rps, p99         estimate // httpfx over the best, paired by round
	aaRPS, aaP99     estimate // the A/A's
	miss, noisy      []string // misses beyond the A/A noise; misses within it
}

// met reports whether the row meets the bar, counting misses within noise as met if lenient,
// and a connection miss due to the cold start alone as met if coldStart.
func (row barRow) met(lenient, coldStart bool) bool {
	miss := row.miss
	if !lenient {
		miss = append(slices.Clone(miss), row.noisy...)
	}
	for _, m := range miss {
		if !(coldStart && m == "conns (cold start only)") {
			return false
		}
	}
	return true
}

// barRows checks httpfx zero-config against the bar in every cell configuration.
func (r *report) barRows() []barRow {
	cp := r.cells.plan
	var rows []barRow
	for _, m := range r.plan.modes {
		for _, d := range cp.delays {
			for _, c := range cp.concs {
				k := cellKey{m.name, d, c, "httpfx"}
				a, ok := r.cells.agg[k]
				if !ok {
					continue
				}
				row := barRow{m: m, delay: d, conc: c, a: a}
				row.bestRPS, row.bestP99 = r.cells.best(m, d, c)
				row.rps = r.cells.paired(k, row.bestRPS, cellRPS)
				row.p99 = r.cells.paired(k, row.bestP99, cellP99)
				row.aaRPS, row.aaP99 = r.cells.aa(k, cellRPS), r.cells.aa(k, cellP99)
				judge := func(name string, missed bool, e, aa estimate) {
					switch {
					case !missed:
					case e.ok() && aa.ok() && e.overlaps(aa):
						row.noisy = append(row.noisy, name)
					default:
						row.miss = append(row.miss, name)
					}
				}
				judge("req/s", row.rps.GM < barRPS, row.rps, row.aaRPS)
				judge("p99", row.p99.GM > barP99, row.p99, row.aaP99)
				if c <= barPoolSize && a.ConnsPerReq > barConns {
					if a.ExcessPerReq <= barConns {
						row.miss = append(row.miss, "conns (cold start only)")
					} else {
						row.miss = append(row.miss, "conns")
					}
				}
				if a.Errors > 0 {
					row.miss = append(row.miss, "errors")
				}
				rows = append(rows, row)
			}
		}
	}
	return rows
}

// writeBar writes the bar check, each ratio beside the A/A's interval.
func (r *report) writeBar(b *strings.Builder) {
	cp := r.cells.plan
	var shares []string
	for _, c := range cp.concs {
		shares = append(shares, fmt.Sprintf("%.4f at %d", float64(c)/float64(cp.requests(c)), c))
	}
	fmt.Fprintf(b, "## The bar, cell by cell: httpfx zero-config\n\n"+
		"Met when req/s ≥ %.2f× the best variant's, p99 ≤ %.2f× the best (lowest) p99, new connections per request ≤ %.2f "+
		"(cells with concurrency ≤ %d) and no errors. \"Best\" is over the compared variants (prototypes and the A/A control "+
		"excluded), httpfx included; the ratios are paired by round. A req/s or p99 miss is **within noise** when its "+
		"interval overlaps the A/A's (the A/A column: raw-tuned-b ÷ raw-tuned in the same cells): two identical clients "+
		"differ as much. Every cell starts cold, so a pooled client must open up to one connection per caller: with "+
		"these request counts that alone is concurrency ÷ requests = %s conns/req; \"beyond 1/caller\" counts only "+
		"connections beyond it, and \"cold start only\" marks a connection miss for that reason alone.\n\n",
		barRPS, barP99, barConns, barPoolSize, strings.Join(shares, ", "))
	b.WriteString("| mode | delay | conc | best req/s: httpfx ÷ it | A/A req/s | best p99: httpfx ÷ it | A/A p99 | conns/req | beyond 1/caller | errors | met |\n")
	b.WriteString("|---|---|--:|---|--:|---|--:|--:|--:|--:|---|\n")
	rows := r.barRows()
	var met, lenient, coldStart int
	for _, row := range rows {
		verdict := "yes"
		switch {
		case len(row.miss) == 0 && len(row.noisy) > 0:
			verdict = "yes, within noise: " + strings.Join(row.noisy, ", ")
		case len(row.miss) > 0:
			verdict = "**no**: " + strings.Join(row.miss, ", ")
			if len(row.noisy) > 0 {
				verdict += "; within noise: " + strings.Join(row.noisy, ", ")
			}
		}
		if row.met(false, false) {
			met++
		}
		if row.met(true, false) {
			lenient++
		}
		if row.met(true, true) {
			coldStart++
		}
		fmt.Fprintf(b, "| %s | %v | %d | %s: %s | %s | %s: %s | %s | %.4f | %.4f | %d | %s |\n",
			row.m.name, row.delay, row.conc, row.bestRPS, row.rps, row.aaRPS, row.bestP99, row.p99, row.aaP99,
			row.a.ConnsPerReq, row.a.ExcessPerReq, row.a.Errors, verdict)
	}
	fmt.Fprintf(b, "\nMet in %d of %d cells; in %d when misses within the A/A noise are not counted; in %d when, besides, "+
		"connections are counted beyond the cold start's one per caller.\n\n", met, len(rows), lenient, coldStart)
}

// writeCellDetails writes every measurement, one table per mode and delay.
func (r *report) writeCellDetails(b *strings.Builder) {
	cp := r.cells.plan
	b.WriteString("### Cold cells: every measurement (medians over rounds)\n\n")
	for _, m := range r.plan.modes {
		for _, d := range cp.delays {
			fmt.Fprintf(b, "#### %s (%s), server delay %v\n\n", m.name, m.title, d)
			b.WriteString("| conc | variant | proto | requests | req/s | p50 ms | p99 ms | conns/req | allocs/req | client CPU µs/req | server CPU µs/req | TIME_WAIT client | other CPU | errors |\n")
			b.WriteString("|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
			for _, c := range cp.concs {
				for _, v := range cp.variants {
					a, ok := r.cells.agg[cellKey{m.name, d, c, v.name}]
					if !ok {
						continue
					}
					errs := errText(a.Errors, a.FirstErr)
					if a.Leftover > 0 {
						errs += fmt.Sprintf(" [conns left open after close in %d round(s)]", a.Leftover)
					}
					fmt.Fprintf(b, "| %d | %s | %s | %.0f | %.0f | %.3f | %.3f | %.4f | %.1f | %.1f | %.1f | %.0f | %.0f%% | %s |\n",
						c, v.name, strings.Join(a.Protos, ","), a.Sent, a.RPS, ms(a.P50), ms(a.P99), a.ConnsPerReq,
						a.AllocsPerReq, us(a.ClientCPUPerRq), us(a.ServerCPUPerRq), a.TWClient, 100*a.OtherCPU, errs)
				}
			}
			b.WriteString("\n")
		}
	}
}

// modeNames are the names of ms.
func modeNames(ms []mode) []string {
	var ns []string
	for _, m := range ms {
		ns = append(ns, m.name)
	}
	return ns
}
