package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The inpkg part runs the core module's in-package benchmarks (../bench_test.go): it builds
// the test binary once and runs it inpkgPlan.runs times, so that every benchmark of one run is
// measured close in time to the others and runs pair their variants, as blocks do in the warm
// part. Each run rotates the order of the variants by one (HTTPFX_BENCH_ROTATE), so that none
// always runs first. A benchmark named Benchmark<group>/<variant> is compared with the base
// variant of its table (inpkgTables): for BenchmarkClient, "raw" (a transport with httpfx's
// settings and bounds, set net/http's way), with "rawAA", the same client again, as the A/A
// control; for BenchmarkNewConnection, "nocache" (no TLS session cache), with "nocacheAA".

// inpkgPlan sizes the inpkg part.
type inpkgPlan struct {
	runs      int
	benchtime string // -test.benchtime of each run, e.g. "2000x"
}

// inpkgTable is one table of the in-package benchmarks: the groups whose name starts with
// prefix, their ratios relative to the variant base, and aa its A/A control.
type inpkgTable struct {
	title, prefix, base, aa string
}

// inpkgTables are the tables of the in-package benchmarks.
var inpkgTables = []inpkgTable{
	{"Requests over a warm pool", "Client/", "raw", "rawAA"},
	{"Requests that need a new TLS connection", "NewConnection/", "nocache", "nocacheAA"},
}

// benchSample is one benchmark's result in one run.
type benchSample struct {
	nsOp, allocsOp float64
}

// inpkgResult is the part's outcome.
type inpkgResult struct {
	command string
	skipped string                   // why the part did not run, if it did not
	samples map[string][]benchSample // by benchmark name without the -GOMAXPROCS suffix, one per run
	order   []string                 // names in first-seen order
	runs    int
}

// runInpkg builds and runs the in-package benchmarks of the module in the parent directory.
func runInpkg(ctx context.Context, ip inpkgPlan) (inpkgResult, error) {
	res := inpkgResult{samples: make(map[string][]benchSample)}
	wd, err := os.Getwd()
	if err != nil {
		return res, fmt.Errorf("working directory: %w", err)
	}
	core := filepath.Dir(wd)
	mod, err := os.ReadFile(filepath.Join(core, "go.mod"))
	if err != nil || !bytes.Contains(mod, []byte("module github.com/httpfx/httpfx\n")) {
		res.skipped = "the parent directory is not the httpfx module (run the bench from bench/)"
		return res, nil
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		res.skipped = "no go command on PATH"
		return res, nil
	}
	tmp, err := os.MkdirTemp("", "httpfx-inpkg-")
	if err != nil {
		return res, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "httpfx.test")
	if out, err := runTool(ctx, 5*time.Minute, core, nil, goTool, "test", "-c", "-o", bin, "."); err != nil {
		return res, fmt.Errorf("go test -c: %w\n%s", err, out)
	}
	args := []string{"-test.run", "^$", "-test.bench", ".", "-test.benchmem", "-test.benchtime", ip.benchtime}
	res.command = fmt.Sprintf("go test -c -o httpfx.test . && for k in $(seq 0 %d); do HTTPFX_BENCH_ROTATE=$k ./httpfx.test %s; done (in the repository root)",
		ip.runs-1, strings.Join(args, " "))
	for run := range ip.runs {
		out, err := runTool(ctx, 5*time.Minute, core, []string{fmt.Sprintf("HTTPFX_BENCH_ROTATE=%d", run)}, bin, args...)
		if err != nil {
			return res, fmt.Errorf("run %d: %w\n%s", run+1, err, out)
		}
		parseBench(out, &res)
		res.runs++
		fmt.Fprintf(os.Stderr, "inpkg run %d/%d\n", run+1, ip.runs)
	}
	return res, nil
}

// runTool runs name with args in dir, with env added to the environment, bounded by timeout,
// and returns its combined output.
func runTool(ctx context.Context, timeout time.Duration, dir string, env []string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	return cmd.CombinedOutput()
}

// parseBench adds the results of one run's output to res.
func parseBench(out []byte, res *inpkgResult) {
	// A result line: name, -GOMAXPROCS suffix, iterations, then value-unit pairs.
	benchLine := regexp.MustCompile(`^Benchmark(\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		var s benchSample
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				s.nsOp = v
			case "allocs/op":
				s.allocsOp = v
			}
		}
		name := m[1]
		if _, seen := res.samples[name]; !seen {
			res.order = append(res.order, name)
		}
		res.samples[name] = append(res.samples[name], s)
	}
}

// groups splits the benchmark names that start with prefix into groups (all but the last path
// element) and their variants (the last element), both in first-seen order.
func (r inpkgResult) groups(prefix string) (groups, variants []string) {
	for _, name := range r.order {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		g, v := splitBench(name)
		if !slices.Contains(groups, g) {
			groups = append(groups, g)
		}
		if !slices.Contains(variants, v) {
			variants = append(variants, v)
		}
	}
	return groups, variants
}

func splitBench(name string) (group, variant string) {
	i := strings.LastIndex(name, "/")
	if i < 0 {
		return name, ""
	}
	return name[:i], name[i+1:]
}

// column returns one measurement of the benchmark name over runs.
func (r inpkgResult) column(name string, f func(benchSample) float64) []float64 {
	var xs []float64
	for _, s := range r.samples[name] {
		xs = append(xs, f(s))
	}
	return xs
}
