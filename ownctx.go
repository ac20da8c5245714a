package httpfx

import (
	"context"
	"errors"
	"slices"
)

// The own mode of a call (see call): the call is itself the cancellable context of its
// request, over a caller's context that never ends. context.WithCancelCause would cost two
// allocations, and net/http's per-request context, made over it, two more to register with it
// and a channel; a call costs a channel, made only when Done is first asked for, and net/http's
// context registers with the call's AfterFunc (two allocations of context's, and only over
// HTTP/1.1: HTTP/2 streams use the call's context as it is).
//
// The own mode is chosen only for a request sent straight to an *http.Transport: a round
// tripper between them may wrap the context, and context would then have to watch the call
// from a goroutine of its own per request.

// afterFuncer is what context looks for in a parent to register a child with, instead of
// starting a goroutine (context.AfterFunc's documentation).
type afterFuncer interface {
	AfterFunc(func()) func() bool
}

var _ afterFuncer = (*call)(nil)

// ownDone returns the own mode's Done channel, which it makes when first asked for: closed
// already if the context was cancelled before.
func (c *call) ownDone() <-chan struct{} {
	if c.made.Load() {
		return c.ch
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.made.Load() {
		c.ch = make(chan struct{})
		if c.ended {
			close(c.ch)
		}
		c.made.Store(true)
	}
	return c.ch
}

// ownCause returns why the own mode's context was cancelled (the call's failure), or nil
// while it was not.
func (c *call) ownCause() error {
	c.mu.Lock()
	ended := c.ended
	c.mu.Unlock()
	if !ended {
		return nil
	}
	if f := c.failure(); f != nil {
		return f
	}
	return context.Canceled
}

// ownErr returns the own mode's Err: context.DeadlineExceeded if a deadline cancelled it,
// context.Canceled if stop did, nil while it runs.
func (c *call) ownErr() error {
	var te *timeoutError
	switch why := c.ownCause(); {
	case why == nil:
		return nil
	case errors.As(why, &te):
		return context.DeadlineExceeded
	}
	return context.Canceled
}

// AfterFunc implements what context looks for in a parent (afterFuncer), so that a context
// made over the call, as net/http makes one per HTTP/1.1 request, is cancelled with it without
// a goroutine. f runs when the call's context is cancelled, or at once in a goroutine of its
// own if it was already, as with context.AfterFunc.
//
// The first registration during the round trip is net/http's: it costs nothing more, its stop
// does not unregister it and reports false (context ignores the result; f, which cancels a
// context, does nothing once that context has ended), and it is let go of when the round trip
// returns (from then on a deadline closes the body instead). Any other gets a stop that
// unregisters it (two allocations), so that contexts made one after another over a long
// response do not pile up.
//
// Outside the own mode the call's context is the caller's (or one of context's own over it),
// and f is registered with that.
func (c *call) AfterFunc(f func()) func() bool {
	if !c.own {
		return context.AfterFunc(c.inner, f)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.ended:
		go f() // as context.AfterFunc: the caller may hold a lock that f takes
		return stopNothing
	case c.after == nil && !c.returned.Load():
		c.after = f
		return stopNothing
	}
	return c.register(f)
}

// register adds f to the call's other registrations, with a stop that unregisters it. Apart
// from AfterFunc so that its first registration does not allocate f's copy; c.mu is held.
func (c *call) register(f func()) func() bool {
	p := &f
	if c.more == nil {
		c.more = new([]*func())
	}
	*c.more = append(*c.more, p)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.more == nil {
			return false // run, or being run
		}
		n := len(*c.more)
		*c.more = slices.DeleteFunc(*c.more, func(q *func()) bool { return q == p })
		return len(*c.more) < n
	}
}

// roundTripReturned lets go of net/http's registration (AfterFunc), in the own mode.
func (c *call) roundTripReturned() {
	if c.own {
		c.mu.Lock()
		c.after = nil
		c.mu.Unlock()
	}
}

// stopNothing is the stop of a registration that needs none: net/http's during the round trip,
// and one made after the call's context ended, whose f runs at once.
func stopNothing() bool { return false }

// cancelContext cancels the call's context, in the own and cancel modes, with the call's
// failure as its cause (the phase has moved to one before: the cancel mode is given it as
// why); in the own mode it closes Done and runs what AfterFunc registered, outside the call's
// lock. It may be called again: it runs what was registered since.
func (c *call) cancelContext(why error) {
	if c.cancel != nil {
		c.cancel(why)
		return
	}
	if !c.own {
		return
	}
	c.mu.Lock()
	if !c.ended {
		c.ended = true
		if c.made.Load() {
			close(c.ch)
		}
	}
	f, more := c.after, c.more
	c.after, c.more = nil, nil
	c.mu.Unlock()
	if f != nil {
		f()
	}
	if more != nil {
		for _, f := range *more {
			(*f)()
		}
	}
}

// causeOf returns context.Cause(ctx), which cannot see the cause of a call's own context: for
// one, or a context made over one (the cold-start gate waits on the certificate hint's), whose
// call was cancelled, it returns the call's cause.
func causeOf(ctx context.Context) error {
	if c := callOf(ctx); c != nil && c.own {
		if why := c.ownCause(); why != nil {
			return why
		}
	}
	return context.Cause(ctx)
}
