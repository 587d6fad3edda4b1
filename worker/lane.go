package worker

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// laneKey names a queue: held cancels wait per (account, category), so a
// burst in one category never delays another.
type laneKey struct {
	account  string
	category string
}

// lane is the queue of one (account, category) and the budget its requests
// spend. Retries go to the front: they were first.
type lane struct {
	key     laneKey
	account *account
	// single and batch are the budgets of the two endpoints; batch is nil
	// when batching is off.
	single   *pacer
	batch    *pacer
	maxBatch int
	// batchOff: Bybit does not offer cancel-batch to this lane (its account
	// or environment); only single cancels are sent. Set once, never reset.
	batchOff atomic.Bool
	mu       sync.Mutex
	queue    []*job
	// keys counts the queued cancels per order, filtered those with an
	// orderFilter (guarded by mu).
	keys     map[string]int
	filtered int
	wake     chan struct{}
	closed   bool
	// rlBackoff paces retries after a 10006 that carried no reset time
	// (guarded by mu).
	rlBackoff *backoff.ExponentialBackOff
}

// rateLimitBackoff is how long to block the lane after a 10006 without a
// reset time: growing while they repeat.
func (l *lane) rateLimitBackoff() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rlBackoff.NextBackOff()
}

func (l *lane) resetRateLimitBackoff() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rlBackoff.Reset()
}

func newLane(key laneKey, a *account, single, batch *pacer) *lane {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 200 * time.Millisecond
	b.MaxInterval = 2 * time.Second
	b.MaxElapsedTime = 0
	return &lane{key: key, account: a, single: single, batch: batch, maxBatch: bybit.MaxBatch(key.category),
		wake: make(chan struct{}, 1), rlBackoff: b, keys: map[string]int{}}
}

// unit is what one exchange call answers: a held cancel and any other held
// cancels of the same order, coalesced so the order is cancelled once.
type unit struct {
	jobs []*job
}

func (u *unit) primary() *job { return u.jobs[0] }

// waitWork blocks until the lane has queued work; false once ctx ends.
func (l *lane) waitWork(ctx context.Context) bool {
	for {
		l.mu.Lock()
		n := len(l.queue)
		l.mu.Unlock()
		if n > 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-l.wake:
		}
	}
}

// batchable counts the cancels waiting that a batch may carry (those with an
// orderFilter go alone). Duplicates count once each here; take folds them
// into one unit, and the caller gives back budget it reserved in excess.
func (l *lane) batchable() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.queue) - l.filtered
}

// take removes up to n units from the front of the queue; batch takes only
// cancels without an orderFilter. Every queued cancel of a taken order joins
// its unit, wherever it waits (among the first n or behind them), so one
// order never appears twice in a request and each copy is answered from the
// one call. It costs O(taken) unless duplicates are queued.
func (l *lane) take(n int, batch bool) []*unit {
	l.mu.Lock()
	defer l.mu.Unlock()
	var units []*unit
	byKey := map[string]*unit{}
	// waiting counts the queued cancels of taken orders not yet joined.
	waiting := 0
	kept := l.queue[:0]
	i := 0
	for ; i < len(l.queue); i++ {
		if len(units) == n && waiting == 0 {
			break
		}
		j := l.queue[i]
		key := j.req.OrderKey()
		if u, ok := byKey[key]; ok {
			u.jobs = append(u.jobs, j)
			l.forgetLocked(j)
			waiting--
			continue
		}
		if len(units) < n && (!batch || !j.singleOnly()) {
			u := &unit{jobs: []*job{j}}
			units = append(units, u)
			byKey[key] = u
			l.forgetLocked(j)
			waiting += l.keys[key]
			continue
		}
		kept = append(kept, j)
	}
	kept = append(kept, l.queue[i:]...)
	clear(l.queue[len(kept):])
	l.queue = kept
	return units
}

// singleOnly: the cancel never goes in a batch (it has an orderFilter, or a
// batch carrying it was refused as a whole).
func (j *job) singleOnly() bool { return j.req.OrderFilter != "" || j.noBatch }

func (l *lane) rememberLocked(j *job) {
	l.keys[j.req.OrderKey()]++
	if j.singleOnly() {
		l.filtered++
	}
}

func (l *lane) forgetLocked(j *job) {
	key := j.req.OrderKey()
	if l.keys[key]--; l.keys[key] <= 0 {
		delete(l.keys, key)
	}
	if j.singleOnly() {
		l.filtered--
	}
}

// push queues j; it returns false if the lane is closed (the worker stops),
// and the caller must release j itself.
func (l *lane) push(j *job, front bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	j.queuedAt = l.single.now() // the worker's clock
	l.rememberLocked(j)
	if front {
		l.queue = append([]*job{j}, l.queue...)
	} else {
		l.queue = append(l.queue, j)
	}
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return true
}

// close stops the lane and returns what was still queued.
func (l *lane) close() []*job {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return l.drain()
}

// drain empties the queue and returns what it held.
func (l *lane) drain() []*job {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := l.queue
	l.queue, l.keys, l.filtered = nil, map[string]int{}, 0
	return q
}
