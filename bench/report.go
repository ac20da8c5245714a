package main

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"time"
)

// The bar httpfx zero-config is held to, per cell.
const (
	barRPS      = 0.95 // req/s at least this share of the best variant's
	barP99      = 1.10 // p99 at most this multiple of the best variant's
	barConns    = 0.01 // new connections per request at most this ...
	barPoolSize = 512  // ... in cells whose concurrency fits the default pool
	baseline    = "raw-tuned"
)

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

// report is a finished run, ready to be written as markdown and SVG.
type report struct {
	plan  plan
	cells map[cellKey]agg
	wall  time.Duration
	when  time.Time
	// retries is how many cells were run again because other processes were busy.
	retries int
}

func buildReport(p plan, results map[cellKey][]cellResult, wall time.Duration) *report {
	rep := &report{plan: p, cells: make(map[cellKey]agg), wall: wall, when: time.Now()}
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
		rep.cells[k] = a
	}
	return rep
}

// median of xs (the mean of the middle two for an even count); 0 for none.
func median[T float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// best returns the compared variant (not an extra) with the highest req/s and the one with the
// lowest p99 in a cell.
func (r *report) best(m mode, delay time.Duration, conc int) (rps, p99 string) {
	var bestRPS float64
	bestP99 := time.Duration(math.MaxInt64)
	for _, v := range r.plan.variants {
		a, ok := r.cells[cellKey{m.name, delay, conc, v.name}]
		if !ok || v.extra || !a.OK() {
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

// OK reports whether the cell has any successful requests to compare.
func (a agg) OK() bool { return a.RPS > 0 }

// markdown renders the whole report.
func (r *report) markdown() string {
	var b strings.Builder
	p := r.plan
	fmt.Fprintf(&b, "# httpfx client benchmark (%s run)\n\n", p.name)
	fmt.Fprintf(&b, "%s, %s %s/%s, %d CPUs, GOMAXPROCS %d. %d round(s), variants interleaved and rotated per round; "+
		"every number is the median over rounds (errors: total). Per cell: max(%d, %d×concurrency) requests, at most %d, "+
		"no new request after %v. Wall time of the run: %v.\n\n",
		r.when.UTC().Format("2006-01-02 15:04 UTC"), runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0),
		p.rounds, p.minN, p.perConc, p.maxN, p.timeCap, r.wall.Round(time.Second))
	var ms, vs []string
	for _, m := range p.modes {
		ms = append(ms, m.name)
	}
	for _, v := range p.variants {
		vs = append(vs, v.name)
	}
	fmt.Fprintf(&b, "Matrix: modes %s; delays %v; concurrencies %v; variants %s.\n\n",
		strings.Join(ms, ", "), p.delays, p.concs, strings.Join(vs, ", "))
	fmt.Fprintf(&b, "Client (this process) and server (a child process) share the same cores over loopback, so "+
		"absolute numbers are low and noisy; compare variants within a cell. The machine may be shared: a cell during "+
		"which other processes used more than %.0f%% of the CPU was run again (at most %d times, %v in all; the quietest "+
		"attempt is kept); %d re-runs happened. The \"other CPU\" column shows what remained.\n\n",
		100*p.noisyCPU, p.maxRetries, p.retryBudget, r.retries)

	b.WriteString("## Variants\n\n")
	for _, v := range p.variants {
		extra := ""
		if v.extra {
			extra = " *(prototype, not counted as \"best\")*"
		}
		fmt.Fprintf(&b, "- **%s**: %s%s\n", v.name, v.desc, extra)
	}
	b.WriteString("\n")

	r.writeRatios(&b)
	r.writeBar(&b)
	r.writeDetails(&b)
	b.WriteString(columnNotes)
	return b.String()
}

// writeRatios writes req/s of every variant relative to the baseline.
func (r *report) writeRatios(b *strings.Builder) {
	p := r.plan
	fmt.Fprintf(b, "## Requests/s relative to %s\n\n", baseline)
	b.WriteString("| mode | delay | conc | " + baseline + " req/s |")
	for _, v := range p.variants {
		fmt.Fprintf(b, " %s |", v.name)
	}
	b.WriteString("\n|---|---|--:|--:|" + strings.Repeat("--:|", len(p.variants)) + "\n")
	for _, m := range r.plan.modes {
		for _, d := range p.delays {
			for _, c := range p.concs {
				base := r.cells[cellKey{m.name, d, c, baseline}]
				fmt.Fprintf(b, "| %s | %v | %d | %.0f |", m.name, d, c, base.RPS)
				for _, v := range p.variants {
					a := r.cells[cellKey{m.name, d, c, v.name}]
					if base.RPS > 0 {
						fmt.Fprintf(b, " %.2f |", a.RPS/base.RPS)
					} else {
						b.WriteString(" – |")
					}
				}
				b.WriteString("\n")
			}
		}
	}
	b.WriteString("\n")
}

// writeBar checks httpfx zero-config against the bar in every cell.
func (r *report) writeBar(b *strings.Builder) {
	p := r.plan
	var shares []string
	for _, c := range p.concs {
		shares = append(shares, fmt.Sprintf("%.4f at %d", float64(c)/float64(p.requests(c)), c))
	}
	fmt.Fprintf(b, "## Bar check: httpfx zero-config\n\n"+
		"Met when req/s ≥ %.2f× the best variant's, p99 ≤ %.2f× the best (lowest) p99, new connections per request ≤ %.2f "+
		"(cells with concurrency ≤ %d) and no errors. \"Best\" is over the compared variants (prototypes excluded), "+
		"httpfx included. Every cell starts cold, so a pooled client must open up to one connection per caller: with "+
		"this run's request counts that alone is concurrency ÷ requests = %s conns/req. The column \"beyond 1/caller\" "+
		"counts only connections beyond that cold start; \"cold start only\" marks cells that miss the connection bar "+
		"for that reason alone.\n\n",
		barRPS, barP99, barConns, barPoolSize, strings.Join(shares, ", "))
	b.WriteString("| mode | delay | conc | req/s ÷ best (best) | p99 ÷ best (best) | conns/req | beyond 1/caller | errors | met |\n")
	b.WriteString("|---|---|--:|---|---|--:|--:|--:|---|\n")
	var met, metChurn, total int
	for _, m := range r.plan.modes {
		for _, d := range p.delays {
			for _, c := range p.concs {
				a, ok := r.cells[cellKey{m.name, d, c, "httpfx"}]
				if !ok {
					continue
				}
				bestRPS, bestP99 := r.best(m, d, c)
				br := r.cells[cellKey{m.name, d, c, bestRPS}]
				bp := r.cells[cellKey{m.name, d, c, bestP99}]
				rpsRatio, p99Ratio := ratio(a.RPS, br.RPS), ratio(float64(a.P99), float64(bp.P99))
				var miss []string
				if rpsRatio < barRPS {
					miss = append(miss, "req/s")
				}
				if p99Ratio > barP99 {
					miss = append(miss, "p99")
				}
				if c <= barPoolSize && a.ConnsPerReq > barConns {
					if a.ExcessPerReq <= barConns {
						miss = append(miss, "conns (cold start only)")
					} else {
						miss = append(miss, "conns")
					}
				}
				if a.Errors > 0 {
					miss = append(miss, "errors")
				}
				verdict := "yes"
				if len(miss) > 0 {
					verdict = "**no**: " + strings.Join(miss, ", ")
				} else {
					met++
				}
				if len(miss) == 0 || (len(miss) == 1 && miss[0] == "conns (cold start only)") {
					metChurn++
				}
				total++
				fmt.Fprintf(b, "| %s | %v | %d | %.2f (%s) | %.2f (%s) | %.4f | %.4f | %d | %s |\n",
					m.name, d, c, rpsRatio, bestRPS, p99Ratio, bestP99, a.ConnsPerReq, a.ExcessPerReq, a.Errors, verdict)
			}
		}
	}
	fmt.Fprintf(b, "\nMet in %d of %d cells; in %d of %d when connections are counted beyond the cold start's one per caller.\n\n",
		met, total, metChurn, total)
}

// writeDetails writes every measurement, one table per mode and delay.
func (r *report) writeDetails(b *strings.Builder) {
	p := r.plan
	b.WriteString("## Per-cell measurements\n\n")
	for _, m := range r.plan.modes {
		for _, d := range p.delays {
			fmt.Fprintf(b, "### %s (%s), server delay %v\n\n", m.name, m.title, d)
			b.WriteString("| conc | variant | proto | requests | req/s | p50 ms | p99 ms | conns/req | allocs/req | client CPU µs/req | server CPU µs/req | TIME_WAIT client | other CPU | errors |\n")
			b.WriteString("|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
			for _, c := range p.concs {
				for _, v := range p.variants {
					a, ok := r.cells[cellKey{m.name, d, c, v.name}]
					if !ok {
						continue
					}
					errs := fmt.Sprint(a.Errors)
					if a.Errors > 0 {
						errs += " (" + truncate(a.FirstErr, 60) + ")"
					}
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

const columnNotes = `## Columns

- **requests**: requests sent in the cell (median over rounds); p99 of a few hundred requests rests on a few samples.
- **req/s**: successful requests / wall time of the cell's load (from the first request to the last response).
- **p50, p99**: latency of successful requests, request start to body read and closed, as the caller sees it.
- **conns/req**: connections the server accepted (ConnState StateNew) during the cell / requests sent.
- **allocs/req**: runtime.MemStats.Mallocs delta of the client process over the load / requests sent
  (includes the load driver's own few allocations, the same for all variants).
- **client CPU, server CPU**: getrusage(RUSAGE_SELF) user+system delta of each process / requests sent.
- **TIME_WAIT client**: client-side TIME_WAIT sockets (remote port = the server's) that appeared during the load,
  read from /proc/net/tcp{,6} when the load ends and before the client is closed: connections the client threw away
  under load. Closing a pooled client afterwards adds one per pooled connection for every variant. Over TLS the
  column stays near 0 even for the variants that churn: the server's close_notify reaches the client's already
  closed socket, which the kernel answers with a reset (TcpExtTCPAbortOnData) instead of lingering in TIME_WAIT;
  there, conns/req shows the churn.
- **other CPU**: share of the host's CPU (all cores) used by processes other than the client and the server during the
  load, from /proc/stat: how noisy the machine was while the cell ran.
- **errors**: failed requests over all rounds, with the first error.
`

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
