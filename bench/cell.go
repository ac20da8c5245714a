package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
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

// modes are the kinds of upstream, in report order.
func modes() []mode {
	return []mode{
		{name: "http1", title: "plain HTTP/1.1"},
		{name: "tls-h2", title: "TLS offering HTTP/2", tls: true, h2: true},
		{name: "tls-h1", title: "TLS, HTTP/1.1 only", tls: true},
	}
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
	port, err := ch.port(spec.mode)
	if err != nil {
		return cellResult{}, err
	}
	base, url := ch.endpoint(spec.mode, spec.delay)
	cli, err := spec.variant.build(target{roots: ch.roots, base: base, conc: spec.conc})
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
	if cli.start != nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := cli.start(sctx)
		cancel()
		if err != nil {
			return cellResult{}, fmt.Errorf("start %s: %w", spec.variant.name, err)
		}
	}

	twBefore, err := readTimeWait()
	if err != nil {
		return cellResult{}, err
	}
	m0, err := meterBegin(ctx, ch)
	if err != nil {
		return cellResult{}, err
	}
	ld := drive(ctx, cli, url, spec.conc, spec.n, spec.timeCap)
	m, err := m0.end(ctx, ch, spec.mode, ld.elapsed)
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
	leftover, err := ch.waitIdle(ctx, spec.mode.name, m0.server.ConnsOpen[spec.mode.name], 5*time.Second)
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
		NewConns: m.newConns,
		Leftover: leftover,
		OtherCPU: m.otherCPU,
	}
	if ld.elapsed > 0 {
		r.RPS = float64(ld.ok) / ld.elapsed.Seconds()
	}
	r.P50, r.P99 = percentile(ld.latencies, 0.50), percentile(ld.latencies, 0.99)
	if sent > 0 {
		r.ConnsPerReq = float64(r.NewConns) / float64(sent)
		r.AllocsPerReq = float64(m.mallocs) / float64(sent)
		r.ClientCPUPerRq = m.cpu / time.Duration(sent)
		r.ServerCPUPerRq = m.serverCPU / time.Duration(sent)
	}
	r.TWClient, r.TWServer = newTimeWait(twBefore, twAfter, port)
	return r, nil
}

// meterStart is the counters read before a load.
type meterStart struct {
	server  serverStats
	mallocs uint64
	cpu     time.Duration // this process's
	host    time.Duration // every process's
}

// metered is what a load cost, from meterStart.end.
type metered struct {
	mallocs   uint64        // allocations of this process (the client)
	cpu       time.Duration // CPU time of this process
	serverCPU time.Duration // CPU time of the server process
	newConns  int64         // connections the server accepted in the load's mode
	otherCPU  float64       // share of the host's CPU other processes used during the load
	server    serverStats   // the server's counters after the load
}

// meterBegin collects garbage, then reads the server's counters (a request, which allocates
// and uses CPU) and then this process's, so that everything the bench does besides the load
// stays outside the window between meterBegin and end.
func meterBegin(ctx context.Context, ch *child) (meterStart, error) {
	runtime.GC()
	var m meterStart
	var err error
	if m.server, err = ch.stats(ctx); err != nil {
		return meterStart{}, err
	}
	if m.host, err = hostBusy(); err != nil {
		return meterStart{}, err
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.mallocs = ms.Mallocs
	if m.cpu, err = selfCPU(); err != nil {
		return meterStart{}, err
	}
	return m, nil
}

// end reads the counters after a load of mode that lasted elapsed, in the reverse order of
// meterBegin, and returns the differences.
func (m0 meterStart) end(ctx context.Context, ch *child, md mode, elapsed time.Duration) (metered, error) {
	cpu, err := selfCPU()
	if err != nil {
		return metered{}, err
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	host, err := hostBusy()
	if err != nil {
		return metered{}, err
	}
	st, err := ch.stats(ctx)
	if err != nil {
		return metered{}, err
	}
	m := metered{
		mallocs:   ms.Mallocs - m0.mallocs,
		cpu:       cpu - m0.cpu,
		serverCPU: st.CPU - m0.server.CPU,
		newConns:  st.ConnsNew[md.name] - m0.server.ConnsNew[md.name],
		server:    st,
	}
	if elapsed > 0 {
		other := (host - m0.host) - m.cpu - m.serverCPU
		m.otherCPU = max(0, float64(other)/float64(elapsed)/float64(runtime.NumCPU()))
	}
	return m, nil
}

// load is the raw outcome of drive.
type load struct {
	ok, errors int
	firstErr   string
	elapsed    time.Duration
	latencies  []time.Duration // of the successful requests, sorted
	protos     []string
}

// drive runs conc callers that share n requests to url. A caller starts no new request after
// timeCap; requests still running at timeCap+hardGrace are cancelled. It returns when every
// caller has returned.
func drive(ctx context.Context, cli *clientUnderTest, url string, conc, n int, timeCap time.Duration) load {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hard := time.AfterFunc(timeCap+hardGrace, cancel)
	defer hard.Stop()

	lat := make([]time.Duration, n) // preallocated: recording allocates nothing
	type callerResult struct {
		errors   int
		firstErr error
		protos   []string
	}
	results := make([]callerResult, conc)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for c := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := &results[c]
			for ctx.Err() == nil && time.Since(start) < timeCap {
				i := next.Add(1) - 1
				if i >= int64(n) {
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

	sent := min(int(next.Load()), n)
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
