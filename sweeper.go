package httpfx

import (
	"sync"
	"sync/atomic"
	"time"
)

// sweeper enforces the deadlines of the calls in flight (Config.Timeout, an upstream's
// Timeout, Config.ResponseHeaderTimeout): every period it looks through them and fails those
// past a deadline. It replaces a timer and a context per request, which cost net/http ten
// allocations on every request, with one goroutine per owner while requests are in flight:
// started by the first request that has a deadline, gone once a sweep finds nothing in flight
// (so that an idle process neither wakes up every period nor keeps a goroutine, even one whose
// app never started), started again by the next such request, stopped and waited for by stop.
// A deadline is met within one period, a sixty-fourth of the shortest timeout (at least 1ms,
// at most 50ms). It is safe for concurrent use once init ran.
type sweeper struct {
	o      *owner
	period atomic.Int64   // nanoseconds between sweeps
	state  atomic.Int32   // sweepIdle, sweepRunning or sweepStopped
	live   atomic.Int32   // goroutines of run that have not returned; for tests
	mu     sync.Mutex     // orders the start of a goroutine with stop
	wg     sync.WaitGroup // the goroutines of run
	quit   chan struct{}  // closed by stop
	buf    []*call        // the sweeping goroutine's, reused between sweeps
}

const (
	sweepIdle    = iota // no goroutine sweeps: nothing with a deadline is in flight
	sweepRunning        // a goroutine sweeps every period
	sweepStopped        // stopped: never starts again
)

func (s *sweeper) init(o *owner) {
	s.o = o
	s.quit = make(chan struct{})
	s.period.Store(int64(50 * time.Millisecond))
	s.bound(o.cfg.Timeout)
	s.bound(o.cfg.ResponseHeaderTimeout)
}

// bound makes the period short enough for a timeout of d; zero means none. It is called
// while the graph is built, before any request.
func (s *sweeper) bound(d time.Duration) {
	if d <= 0 {
		return
	}
	p := min(max(d/64, time.Millisecond), 50*time.Millisecond)
	if int64(p) < s.period.Load() {
		s.period.Store(int64(p))
	}
}

// kick makes sure a goroutine sweeps, now that a call with a deadline is listed: while one
// does, one atomic load.
func (s *sweeper) kick() {
	if s.state.Load() != sweepRunning {
		s.kickSlow()
	}
}

func (s *sweeper) kickSlow() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state.CompareAndSwap(sweepIdle, sweepRunning) {
		s.wg.Add(1)
		s.live.Add(1)
		go s.run()
	}
}

// stop stops the goroutines, if any, and waits until they have returned. No sweep runs after
// stop returns; the deadlines of calls still in flight are then stop's to enforce. It may be
// called more than once.
func (s *sweeper) stop() {
	s.mu.Lock()
	if s.state.Swap(sweepStopped) != sweepStopped {
		close(s.quit)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *sweeper) run() {
	defer s.wg.Done()
	defer s.live.Add(-1)
	t := time.NewTimer(time.Duration(s.period.Load()))
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		if s.sweep() == 0 { // nothing in flight: leave
			if !s.state.CompareAndSwap(sweepRunning, sweepIdle) {
				return // stopped
			}
			// A call that came meanwhile may have seen the sweeper running, and started none:
			// sweep on for it, unless its kick (or another's) started a goroutine already.
			if s.o.calls.empty() || !s.state.CompareAndSwap(sweepIdle, sweepRunning) {
				return
			}
		}
		t.Reset(time.Duration(s.period.Load()))
	}
}

// sweep fails the calls in flight that are past a deadline, repeats the cancellation of those
// whose round trip has not returned yet, and returns how many calls are in flight.
func (s *sweeper) sweep() int {
	now := s.o.clock.now()
	s.buf = s.o.calls.visit(s.buf[:0])
	n := len(s.buf)
	for _, c := range s.buf {
		switch p := c.phase.Load(); p {
		case phaseHeaders, phaseBody:
			if q := c.expired(p, now); q != p {
				c.fail(p, q)
			}
		case phaseHeaderTimeout, phaseTimeoutInHeader, phaseCutInHeader:
			c.stopRoundTrip()
		}
	}
	clear(s.buf) // hold no finished call
	return n
}
