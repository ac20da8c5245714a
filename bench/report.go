package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// report is a finished run, ready to be written as markdown, SVG and the performance page. A
// part that did not run has its zero value.
type report struct {
	plan    plan
	when    time.Time
	wall    time.Duration
	took    [4]time.Duration // start, warm, cells, inpkg
	start   map[burstKey][]burstResult
	warm    []warmGroup
	cells   cellsData
	retries int // cells run again because other processes were busy
	inpkg   inpkgResult
}

// write writes report.md (also to stdout) and chart.svg (if the cells part ran) to outDir and,
// for a complete run, the performance page to page (see pagePath).
func (r *report) write(outDir, page string) error {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", outDir, err)
	}
	links, err := linksFrom(page, outDir)
	if err != nil {
		return err
	}
	files := []struct {
		path string
		ok   bool
		text func() string
	}{
		{filepath.Join(outDir, "report.md"), true, r.markdown},
		{filepath.Join(outDir, "chart.svg"), r.plan.parts.has(partCells), r.chart},
		{page, r.plan.complete, func() string { return r.page(links) }},
	}
	var wrote []string
	for i, f := range files {
		if !f.ok {
			continue
		}
		text := f.text()
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(f.path), err)
		}
		if err := os.WriteFile(f.path, []byte(text), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", f.path, err)
		}
		if i == 0 {
			fmt.Print(text)
		}
		wrote = append(wrote, f.path)
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s in %v\n", strings.Join(wrote, ", "), r.wall.Round(time.Second))
	if !r.plan.complete {
		fmt.Fprintf(os.Stderr, "bench: a narrowed run (-parts, -modes, -variants, -concs or -delays): %s not written\n", page)
	}
	return nil
}

// pageLinks are the paths, relative to the performance page, of what it links to.
type pageLinks struct {
	bench  string // bench/README.md
	report string // the report of the run
	chart  string // its chart
}

// linksFrom returns the links of a page written to page, for a run whose report and chart are
// in outDir. Paths are relative to the working directory, which is bench/.
func linksFrom(page, outDir string) (pageLinks, error) {
	rel := func(target string) (string, error) {
		from, err := filepath.Abs(filepath.Dir(page))
		if err != nil {
			return "", err
		}
		to, err := filepath.Abs(target)
		if err != nil {
			return "", err
		}
		p, err := filepath.Rel(from, to)
		return filepath.ToSlash(p), err
	}
	var l pageLinks
	var errs [3]error
	l.bench, errs[0] = rel("README.md")
	l.report, errs[1] = rel(filepath.Join(outDir, "report.md"))
	l.chart, errs[2] = rel(filepath.Join(outDir, "chart.svg"))
	if err := errors.Join(errs[:]...); err != nil {
		return pageLinks{}, fmt.Errorf("links of the performance page %s: %w", page, err)
	}
	return l, nil
}

// markdown renders the whole report.
func (r *report) markdown() string {
	var b strings.Builder
	p := r.plan
	fmt.Fprintf(&b, "# httpfx client benchmark (%s run)\n\n", p.name)
	fmt.Fprintf(&b, "%s. %s. Seed of the shuffled orders: %d.\n\n", r.machine(), r.timing(), p.seed)
	b.WriteString(readingNotes)
	b.WriteString("## Variants\n\n")
	for _, v := range allVariants() {
		if !r.measured(v.name) {
			continue
		}
		note := ""
		switch {
		case v.extra:
			note = " *(prototype, not counted as \"best\")*"
		case v.control:
			note = " *(A/A control, not counted as \"best\")*"
		}
		fmt.Fprintf(&b, "- **%s**: %s%s\n", v.name, v.desc, note)
	}
	b.WriteString("\n")
	if p.parts.has(partStart) {
		r.writeStart(&b, true)
	}
	if p.parts.has(partWarm) {
		r.writeWarm(&b, true)
	}
	if p.parts.has(partCells) {
		r.writeCells(&b, true)
	}
	if p.parts.has(partInpkg) {
		r.writeInpkg(&b)
	}
	b.WriteString(columnNotes)
	return b.String()
}

// machine describes where and when the run was made.
func (r *report) machine() string {
	return fmt.Sprintf("%s, %s %s/%s, %d CPUs, GOMAXPROCS %d", r.when.UTC().Format("2006-01-02 15:04 UTC"),
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0))
}

// timing gives the wall time of the run and of each part that ran.
func (r *report) timing() string {
	var parts []string
	for i, n := range partNames() {
		if r.plan.parts.has(n.part) {
			parts = append(parts, fmt.Sprintf("%s %v", n.name, r.took[i].Round(time.Second)))
		}
	}
	return fmt.Sprintf("Wall time %v (%s)", r.wall.Round(time.Second), strings.Join(parts, ", "))
}

// measured reports whether any part measured the variant.
func (r *report) measured(name string) bool {
	p := r.plan
	for _, vs := range [][]variant{p.start.variants, p.warm.variants, p.cells.variants} {
		if slices.ContainsFunc(vs, func(v variant) bool { return v.name == name }) {
			return true
		}
	}
	return false
}

const readingNotes = `Client (this process) and server (a child process) share the same cores over loopback, and the
machine may be shared, so absolute numbers are those of a small noisy box. Every part therefore measures
the **A/A control** raw-tuned-b, a second raw-tuned built the same way, and compares variants only with
raw-tuned measured at nearly the same time: in the same round (cold cells), block (steady state) or
repetition (cold start), in shuffled order. A ratio is the geometric mean of those paired ratios, with its
95% confidence interval (a t-interval over the log ratios) in parentheses. The A/A's interval is the
noise of the run: a ratio whose interval overlaps the A/A's is **within noise**; one wholly below it is
marked ▼, wholly above ▲. With one round there is no interval and no mark.

`

// columnNotes explains the measurements.
const columnNotes = `## Columns

- **req/s**: successful requests / wall time of the load (from the first request to the last response).
- **p50, p99**: latency of successful requests, request start to body read and closed, as the caller sees it
  (nearest rank). In the cold start, per burst: with 16 callers the p99 is the slowest request.
- **conns/req, conns/caller**: connections the server accepted (ConnState StateNew) / requests sent, or / callers.
- **allocs/req**: runtime.MemStats.Mallocs delta of the client process over the load / requests sent
  (includes the load driver's own few allocations, the same for all variants). **Δ allocs**: the mean over blocks
  of the difference to raw-tuned's in the same block, with its 95% interval.
- **client CPU, server CPU**: getrusage(RUSAGE_SELF) user+system delta of each process / requests sent.
- **TIME_WAIT client**: client-side TIME_WAIT sockets (remote port = the server's) that appeared during the load,
  read from /proc/net/tcp{,6} when the load ends and before the client is closed: connections the client threw away
  under load. Closing a pooled client afterwards adds one per pooled connection for every variant. Over TLS the
  column stays near 0 even for the variants that churn: the server's close_notify reaches the client's already
  closed socket, which the kernel answers with a reset (TcpExtTCPAbortOnData) instead of lingering in TIME_WAIT;
  there, conns/req shows the churn.
- **other CPU**: share of the host's CPU (all cores) used by processes other than the client and the server during the
  load, from /proc/stat: how noisy the machine was.
- **errors**: failed requests, with the first error.
`

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

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// errText is a count of errors with the first one, for a table cell.
func errText(n int, first string) string {
	if n == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", n, truncate(first, 60))
}

// compared are the variants of vs other than the baseline and its control, in order.
func compared(vs []variant) []variant {
	var out []variant
	for _, v := range vs {
		if v.name != baseline && !v.control {
			out = append(out, v)
		}
	}
	return out
}
