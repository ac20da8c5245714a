package httpfx

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
)

// body tracks a response body: the request stays in flight until the body is closed, read to
// EOF or fails, or the request's context ends, whichever comes first. It is safe for a Close
// concurrent with a Read, as net/http's bodies are.
//
// A context that ends is noticed without a per-request registration, which would cost three
// allocations on every request: Snapshot and stop look through the bodies in flight (reap),
// a sample of requests does so for one shard, and while stop drains, each body in flight
// registers with its context.
type body struct {
	prev, next *body      // in its shard of owner.bodies while in flight
	shard      *bodyShard // nil until added

	rc     io.ReadCloser
	o      *owner
	up     *upstream          // the upstream client that sent it; nil for the owned client
	cancel context.CancelFunc // ends the request's own timeout context; nil if none
	ctx    context.Context    // the request's context, if its end must finish the request
	obs    *obsReq            // the request's observation; nil unless observed
	done   atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.end(nil)
	} else if err != nil {
		b.end(err)
	}
	return n, err
}

func (b *body) Close() error {
	err := b.rc.Close()
	b.end(nil)
	return err
}

// watch finishes the request, in a goroutine of context's, when its context ends. The
// registration is left to end with the context: stop calls it for bodies in flight only.
func (b *body) watch() {
	if b.ctx != nil {
		context.AfterFunc(b.ctx, func() { b.end(ctxEnded(b.ctx)) })
	}
}

// cut closes the body under the caller, who may never close it, so that net/http lets go of
// its connection and goroutines, and finishes the request as failed.
func (b *body) cut() {
	b.rc.Close()
	b.end(errCut)
}

// end finishes the request once, whichever of Read, Close, the context's end and cut comes
// first; err is nil if the body was finished well, else why it failed.
func (b *body) end(err error) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	b.o.bodies.remove(b)
	if b.obs != nil {
		b.obs.finish(err)
	}
	b.o.finish(b.cancel, b.up, err != nil)
}

// rwBody keeps a 101 Switching Protocols body writable, as net/http returns it.
type rwBody struct {
	body
	w io.Writer
}

func (b *rwBody) Write(p []byte) (int, error) { return b.w.Write(p) }

var (
	_ io.ReadCloser      = (*body)(nil)
	_ io.ReadWriteCloser = (*rwBody)(nil)
)

// bodyShards is how many locks the bodies in flight are spread over, so that requests on many
// cores seldom wait for one another.
const bodyShards = 16

// bodyList holds the bodies in flight, so that stop can cut the ones nobody closes. Adding and
// removing take a short lock of one shard and no allocation. It is safe for concurrent use
// once init ran.
type bodyList struct {
	shards [bodyShards]bodyShard
}

type bodyShard struct {
	mu     sync.Mutex
	head   body // sentinel of a circular list
	closed bool // stop has cut this shard: no more bodies
	_      [64]byte
}

func (l *bodyList) init() {
	for i := range l.shards {
		h := &l.shards[i].head
		h.prev, h.next = h, h
	}
}

// add puts b in the shard of the request numbered seq, or reports false if stop has cut.
func (l *bodyList) add(b *body, seq int64) bool {
	s := &l.shards[uint64(seq)%bodyShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	b.shard = s
	b.prev, b.next = s.head.prev, &s.head
	s.head.prev.next = b
	s.head.prev = b
	return true
}

func (l *bodyList) remove(b *body) {
	s := b.shard
	if s == nil {
		return
	}
	s.mu.Lock()
	if b.prev != nil {
		b.prev.next, b.next.prev = b.next, b.prev
		b.prev, b.next = nil, nil
	}
	s.mu.Unlock()
}

// reapEvery is how often, in requests, one shard of the bodies in flight is looked through
// for requests whose context ended, so that abandoned bodies do not pile up.
const reapEvery = 1024

// reap finishes the requests in flight whose context has ended: those of shard i, or of all
// shards if i is negative.
func (l *bodyList) reap(i int64) {
	var ended []*body
	for j := range l.shards {
		if i >= 0 && int64(j) != i%bodyShards {
			continue
		}
		s := &l.shards[j]
		s.mu.Lock()
		for b := s.head.next; b != &s.head; b = b.next {
			if b.ctx != nil && b.ctx.Err() != nil {
				ended = append(ended, b)
			}
		}
		s.mu.Unlock()
	}
	for _, b := range ended {
		b.end(ctxEnded(b.ctx))
	}
}

// all returns the bodies in flight.
func (l *bodyList) all() []*body {
	var out []*body
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for b := s.head.next; b != &s.head; b = b.next {
			out = append(out, b)
		}
		s.mu.Unlock()
	}
	return out
}

// close refuses further bodies and returns those in flight.
func (l *bodyList) close() []*body {
	var out []*body
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		s.closed = true
		for b := s.head.next; b != &s.head; b = b.next {
			out = append(out, b)
		}
		s.mu.Unlock()
	}
	return out
}
