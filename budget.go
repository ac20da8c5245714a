package httpfx

import (
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// budgetWindow is how many seconds of requests and retries a retry budget weighs.
const budgetWindow = 10

// maxBudgets bounds the origins that have a retry budget of their own; past it, the origins
// left share one.
const maxBudgets = 4096

// budgets are the retry budgets of one owner, one per origin (the URL's scheme and host as
// written): kept with the pool, so shared by the shared client and every upstream client,
// since they all load the same servers. An fx app has one pool, so a service has one budget
// per origin; two apps in one process (tests, mostly) keep theirs apart, as there are no
// globals. It is safe for concurrent use.
type budgets struct {
	percent, perSecond int64 // Config.Retry's BudgetPercent and BudgetPerSecond
	clock              *clock

	mu       sync.Mutex                         // guards adding an origin
	byOrigin atomic.Pointer[map[origin]*budget] // replaced whole when an origin is added
	overflow budget                             // the origins past maxBudgets
}

// origin is what a budget is kept by: comparable without an allocation.
type origin struct{ scheme, host string }

// budget bounds the retries to one origin, as Finagle's RetryBudget does: over the last
// budgetWindow seconds, retries may be at most percent of the requests, plus perSecond a
// second whatever the requests, so that a failing upstream sees a bounded share of extra load
// however many callers retry. Counting a request is two atomic operations.
type budget struct {
	slots [budgetWindow]budgetSlot // one per second, by second modulo budgetWindow
}

type budgetSlot struct {
	sec               atomic.Int64 // the second it counts
	requests, retries atomic.Int64
}

func newBudgets(percent, perSecond int, clk *clock) *budgets {
	return &budgets{percent: int64(percent), perSecond: int64(perSecond), clock: clk}
}

// request counts a request sent to u's origin and returns the origin's budget.
func (bs *budgets) request(u *url.URL) *budget {
	b := bs.of(u)
	b.slot(bs.clock.now()).requests.Add(1)
	return b
}

// of returns the budget of u's origin.
func (bs *budgets) of(u *url.URL) *budget {
	key := origin{u.Scheme, u.Host}
	if m := bs.byOrigin.Load(); m != nil {
		if b := (*m)[key]; b != nil {
			return b
		}
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	old := bs.byOrigin.Load()
	if old != nil {
		if b := (*old)[key]; b != nil {
			return b
		}
		if len(*old) >= maxBudgets {
			return &bs.overflow
		}
	}
	m := make(map[origin]*budget, 1)
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	b := new(budget)
	m[key] = b
	bs.byOrigin.Store(&m)
	return b
}

// slot returns the slot of now, the owner's clock, emptied if it counted an older second.
func (b *budget) slot(now int64) *budgetSlot {
	sec := now / int64(time.Second)
	s := &b.slots[sec%budgetWindow]
	if old := s.sec.Load(); old != sec && s.sec.CompareAndSwap(old, sec) {
		s.requests.Store(0)
		s.retries.Store(0)
	}
	return s
}

// retry reports whether the budget has room for one more retry, and counts it if so.
func (bs *budgets) retry(b *budget) bool {
	now := bs.clock.now()
	sec := now / int64(time.Second)
	var requests, retries int64
	for i := range b.slots {
		s := &b.slots[i]
		if sec-s.sec.Load() < budgetWindow {
			requests += s.requests.Load()
			retries += s.retries.Load()
		}
	}
	if 100*retries >= bs.percent*requests+100*bs.perSecond*budgetWindow {
		return false
	}
	b.slot(now).retries.Add(1)
	return true
}
