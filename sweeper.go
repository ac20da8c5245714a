package httpfx

import (
	"sync/atomic"
	"time"
)

// sweeper enforces the deadlines of the calls in flight (Config.Timeout, an upstream's
// Timeout, Config.ResponseHeaderTimeout): every period it looks through them and fails those
// past a deadline. It replaces a timer and a context per request, which cost net/http ten
// allocations on every request, with one goroutine per owner: started by the first request
// that has a deadline, parked while nothing is in flight, stopped and waited for by stop. A
// deadline is met within one period, a sixty-fourth of the shortest timeout (at least 1ms, at
// most 50ms). It is safe for concurrent use once init ran.
type sweeper struct {
	o      *owner
	period atomic.Int64  // nanoseconds between sweeps
	state  atomic.Int32  // sweepIdle, sweepRunning, sweepParked or sweepStopped
	wake   chan struct{} // a parked sweeper's: a call came
	quit   chan struct{} // closed by stop
	exited chan struct{} // closed when the goroutine returns
	buf    []*call       // the goroutine's, reused between sweeps
}

const (
	sweepIdle    = iota // never started
	sweepRunning        // sweeping every period
	sweepParked         // waiting for a call
	sweepStopped        // stopped: never starts again
)

func (s *sweeper) init(o *owner) {
	s.o = o
	s.wake = make(chan struct{}, 1)
	s.quit = make(chan struct{})
	s.exited = make(chan struct{})
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

// kick makes sure the sweeper runs, now that a call with a deadline is listed: while it runs,
// one atomic load.
func (s *sweeper) kick() {
	if s.state.Load() != sweepRunning {
		s.kickSlow()
	}
}

func (s *sweeper) kickSlow() {
	for {
		switch s.state.Load() {
		case sweepRunning, sweepStopped:
			return
		case sweepIdle:
			if s.state.CompareAndSwap(sweepIdle, sweepRunning) {
				go s.run()
				return
			}
		case sweepParked:
			if s.state.CompareAndSwap(sweepParked, sweepRunning) {
				select {
				case s.wake <- struct{}{}:
				default:
				}
				return
			}
		}
	}
}

// stop stops the goroutine, if it started, and waits until it has returned. No sweep runs
// after stop returns; the deadlines of calls still in flight are then stop's to enforce.
func (s *sweeper) stop() {
	if s.state.Swap(sweepStopped) == sweepIdle {
		return
	}
	close(s.quit)
	<-s.exited
}

func (s *sweeper) run() {
	defer close(s.exited)
	t := time.NewTimer(time.Duration(s.period.Load()))
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		if s.sweep() == 0 { // nothing in flight: park until a call comes
			s.state.CompareAndSwap(sweepRunning, sweepParked)
			if s.sweep() > 0 { // one came meanwhile: its kick may have seen the sweeper running
				s.state.CompareAndSwap(sweepParked, sweepRunning)
			} else {
				select {
				case <-s.wake:
				case <-s.quit:
					return
				}
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
