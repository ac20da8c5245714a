package main

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// mode is one kind of upstream the child serves.
type mode struct {
	name  string
	title string
	tls   bool
	h2    bool // TLS offers HTTP/2 (ALPN h2) as well as HTTP/1.1
}

var modes = []mode{
	{name: "http1", title: "plain HTTP/1.1"},
	{name: "tls-h2", title: "TLS offering HTTP/2", tls: true, h2: true},
	{name: "tls-h1", title: "TLS, HTTP/1.1 only", tls: true},
}

// cellSpec is one measurement: a variant at a concurrency against a mode and delay.
type cellSpec struct {
	mode    mode
	delay   time.Duration
	conc    int
	n       int           // requests to send
	timeCap time.Duration // no new request starts after this
	variant variant
}

// cellResult is what one run of a cell measured.
type cellResult struct {
	OK, Errors     int
	FirstErr       string
	Elapsed        time.Duration
	RPS            float64
	P50, P99       time.Duration
	NewConns       int64   // connections the server accepted during the cell
	ConnsPerReq    float64 // NewConns / requests sent
	AllocsPerReq   float64 // client-process mallocs / requests sent
	ClientCPUPerRq time.Duration
	ServerCPUPerRq time.Duration
	TWClient       int // TIME_WAIT sockets new on the client side at the end of the load
	TWServer       int // the same on the server side
	Protos         []string
	Leftover       int64   // connections the server still had open 5s after the client was closed
	OtherCPU       float64 // share of the host's CPU that other processes used during the load
}

// hardGrace is how long requests in flight at the time cap may take before the cell's
// context is cancelled: a bound for variants that have no timeout of their own.
const hardGrace = 20 * time.Second

// runCell builds a fresh client, drives spec.n requests from spec.conc callers (stopping early
// at spec.timeCap), measures, closes the client and waits until the server has seen its
// connections close.
func runCell(ctx context.Context, ch *child, spec cellSpec) (cellResult, error) {
	addr := ch.info.Addrs[spec.mode.name]
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return cellResult{}, fmt.Errorf("server address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return cellResult{}, fmt.Errorf("server port %q: %w", portStr, err)
	}
	scheme := "http"
	if spec.mode.tls {
		scheme = "https"
	}
	url := scheme + "://" + addr + "/"
	if spec.delay > 0 {
		url += "sleep/" + spec.delay.String()
	}

	cli, err := spec.variant.build(ch.roots)
	if err != nil {
		return cellResult{}, fmt.Errorf("build %s: %w", spec.variant.name, err)
	}
	closed := false
	closeClient := func() error {
		if closed {
			return nil
		}
		closed = true
		cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		return cli.close(cctx)
	}
	defer closeClient()

	// Everything the parent does besides the load (stats requests, /proc reads, GC) stays
	// outside the window between the two MemStats and rusage reads.
	runtime.GC()
	twBefore, err := readTimeWait()
	if err != nil {
		return cellResult{}, err
	}
	sBefore, err := ch.stats(ctx)
	if err != nil {
		return cellResult{}, err
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0, err := selfCPU()
	if err != nil {
		return cellResult{}, err
	}
	host0, err := hostBusy()
	if err != nil {
		return cellResult{}, err
	}

	ld := drive(ctx, cli, url, spec)

	host1, err := hostBusy()
	if err != nil {
		return cellResult{}, err
	}
	cpu1, err := selfCPU()
	if err != nil {
		return cellResult{}, err
	}
	runtime.ReadMemStats(&m1)
	sAfter, err := ch.stats(ctx)
	if err != nil {
		return cellResult{}, err
	}
	twAfter, err := readTimeWait()
	if err != nil {
		return cellResult{}, err
	}
	if err := closeClient(); err != nil {
		return cellResult{}, err
	}
	leftover, err := ch.waitIdle(ctx, spec.mode.name, sBefore.ConnsOpen[spec.mode.name], 5*time.Second)
	if err != nil {
		return cellResult{}, err
	}

	sent := ld.ok + ld.errors
	r := cellResult{
		OK:       ld.ok,
		Errors:   ld.errors,
		FirstErr: ld.firstErr,
		Elapsed:  ld.elapsed,
		Protos:   ld.protos,
		NewConns: sAfter.ConnsNew[spec.mode.name] - sBefore.ConnsNew[spec.mode.name],
		Leftover: leftover,
	}
	if ld.elapsed > 0 {
		r.RPS = float64(ld.ok) / ld.elapsed.Seconds()
	}
	r.P50, r.P99 = percentile(ld.latencies, 0.50), percentile(ld.latencies, 0.99)
	if sent > 0 {
		r.ConnsPerReq = float64(r.NewConns) / float64(sent)
		r.AllocsPerReq = float64(m1.Mallocs-m0.Mallocs) / float64(sent)
		r.ClientCPUPerRq = (cpu1 - cpu0) / time.Duration(sent)
		r.ServerCPUPerRq = (sAfter.CPU - sBefore.CPU) / time.Duration(sent)
	}
	r.TWClient, r.TWServer = newTimeWait(twBefore, twAfter, port)
	if ld.elapsed > 0 {
		other := (host1 - host0) - (cpu1 - cpu0) - (sAfter.CPU - sBefore.CPU)
		r.OtherCPU = max(0, float64(other)/float64(ld.elapsed)/float64(runtime.NumCPU()))
	}
	return r, nil
}

// load is the raw outcome of drive.
type load struct {
	ok, errors int
	firstErr   string
	elapsed    time.Duration
	latencies  []time.Duration // of the successful requests, sorted
	protos     []string
}

// drive runs spec.conc callers that share spec.n requests. A caller starts no new request
// after spec.timeCap; requests still running at timeCap+hardGrace are cancelled. It returns
// when every caller has returned.
func drive(ctx context.Context, cli *clientUnderTest, url string, spec cellSpec) load {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hard := time.AfterFunc(spec.timeCap+hardGrace, cancel)
	defer hard.Stop()

	lat := make([]time.Duration, spec.n) // preallocated: recording allocates nothing
	type callerResult struct {
		errors   int
		firstErr error
		protos   []string
	}
	results := make([]callerResult, spec.conc)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for c := range spec.conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := &results[c]
			for ctx.Err() == nil && time.Since(start) < spec.timeCap {
				i := next.Add(1) - 1
				if i >= int64(spec.n) {
					return
				}
				t0 := time.Now()
				proto, err := cli.get(ctx, url)
				if err != nil {
					lat[i] = -1
					res.errors++
					if res.firstErr == nil {
						res.firstErr = err
					}
					continue
				}
				lat[i] = time.Since(t0)
				if !slices.Contains(res.protos, proto) {
					res.protos = append(res.protos, proto)
				}
			}
		}()
	}
	wg.Wait()
	var ld load
	ld.elapsed = time.Since(start)

	sent := min(int(next.Load()), spec.n)
	for _, d := range lat[:sent] {
		if d >= 0 {
			ld.latencies = append(ld.latencies, d)
		}
	}
	slices.Sort(ld.latencies)
	ld.ok = len(ld.latencies)
	for _, res := range results {
		ld.errors += res.errors
		if ld.firstErr == "" && res.firstErr != nil {
			ld.firstErr = res.firstErr.Error()
		}
		for _, p := range res.protos {
			if !slices.Contains(ld.protos, p) {
				ld.protos = append(ld.protos, p)
			}
		}
	}
	slices.Sort(ld.protos)
	return ld
}

// percentile returns the q-quantile (nearest rank) of sorted durations, or 0 if there are
// none.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
