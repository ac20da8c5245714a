package httpfx

import "sync"

// callShards is how many locks the calls in flight are spread over, so that requests on many
// cores seldom wait for one another.
const callShards = 16

// callList holds the calls in flight, from admission until they are finished, so that the
// sweeper can enforce their deadlines and stop can cut the ones nobody finishes. Adding and
// removing take a short lock of one shard and no allocation. It is safe for concurrent use
// once init ran.
type callList struct {
	shards [callShards]callShard
}

type callShard struct {
	mu     sync.Mutex
	head   call // sentinel of a circular list
	closed bool // stop has cut this shard: no more calls
	_      [64]byte
}

func (l *callList) init() {
	for i := range l.shards {
		h := &l.shards[i].head
		h.prev, h.next = h, h
	}
}

// add puts c in the shard of the request numbered seq, or reports false if stop has cut.
func (l *callList) add(c *call, seq int64) bool {
	s := &l.shards[uint64(seq)%callShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	c.shard = s
	c.prev, c.next = s.head.prev, &s.head
	s.head.prev.next = c
	s.head.prev = c
	return true
}

func (l *callList) remove(c *call) {
	s := c.shard
	if s == nil {
		return
	}
	s.mu.Lock()
	if c.prev != nil {
		c.prev.next, c.next.prev = c.next, c.prev
		c.prev, c.next = nil, nil
	}
	s.mu.Unlock()
}

// reapEvery is how often, in requests, one shard of the calls in flight is looked through
// for requests whose context ended while their body was unread, so that abandoned bodies do
// not pile up.
const reapEvery = 1024

// reap finishes the calls reading their body whose context has ended: those of shard i, or of
// all shards if i is negative.
func (l *callList) reap(i int64) {
	var ended []*call
	for j := range l.shards {
		if i >= 0 && int64(j) != i%callShards {
			continue
		}
		s := &l.shards[j]
		s.mu.Lock()
		for c := s.head.next; c != &s.head; c = c.next {
			if c.phase.Load() == phaseBody && c.watch != nil && c.watch.Err() != nil {
				ended = append(ended, c)
			}
		}
		s.mu.Unlock()
	}
	for _, c := range ended {
		c.end(ctxEnded(c.watch))
	}
}

// empty reports whether no call is in flight.
func (l *callList) empty() bool {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		none := s.head.next == &s.head
		s.mu.Unlock()
		if !none {
			return false
		}
	}
	return true
}

// visit appends the calls in flight to buf and returns it.
func (l *callList) visit(buf []*call) []*call {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for c := s.head.next; c != &s.head; c = c.next {
			buf = append(buf, c)
		}
		s.mu.Unlock()
	}
	return buf
}

// close refuses further calls and returns those in flight.
func (l *callList) close() []*call {
	var out []*call
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		s.closed = true
		for c := s.head.next; c != &s.head; c = c.next {
			out = append(out, c)
		}
		s.mu.Unlock()
	}
	return out
}
