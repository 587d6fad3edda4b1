package worker

import (
	"context"
	"sync"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// pacer keeps requests to one budget (an (account, endpoint, category) of
// Bybit's, or the process-wide IP limit) inside a rolling window, the way
// Bybit counts them. A token bucket would not do: it lets a full burst through
// and then one more request long before the window has rolled.
//
// Every request holds a slot from the moment it is let through; when its
// answer arrives the slot is dated with that time and expires one window
// later. Dating by the answer, not the send, means the exchange (which dates
// by arrival, somewhere in between) can never see more than the limit in any
// window.
type pacer struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	slots   []*slot
	blocked time.Time     // no request before this (a 10006, exhausted headers)
	changed chan struct{} // closed and replaced whenever a slot is freed
}

type slot struct {
	done bool
	at   time.Time
}

func newPacer(r Rate, now func() time.Time) *pacer {
	return &pacer{limit: r.N, window: r.Per, now: now, changed: make(chan struct{})}
}

// unlimited pacers let everything through at once.
func (p *pacer) unlimited() bool { return p == nil || p.limit <= 0 }

// acquire waits until a request may be sent and returns the function that
// records its answer time, and how long it waited.
func (p *pacer) acquire(ctx context.Context) (release func(), waited time.Duration, err error) {
	if p.unlimited() {
		return func() {}, 0, nil
	}
	start := p.now()
	for {
		p.mu.Lock()
		now := p.now()
		p.pruneLocked(now)
		var wait time.Duration
		switch {
		case now.Before(p.blocked):
			wait = p.blocked.Sub(now)
		case len(p.slots) < p.limit:
			s := &slot{}
			p.slots = append(p.slots, s)
			p.mu.Unlock()
			return func() { p.free(s) }, now.Sub(start), nil
		default:
			wait = p.nextExpiryLocked(now) // 0: every slot is in flight
		}
		changed := p.changed
		p.mu.Unlock()

		if err := sleepOrChange(ctx, wait, changed); err != nil {
			return nil, p.now().Sub(start), err
		}
	}
}

func (p *pacer) free(s *slot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.done, s.at = true, p.now()
	p.wakeLocked()
}

func (p *pacer) wakeLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *pacer) pruneLocked(now time.Time) {
	kept := p.slots[:0]
	for _, s := range p.slots {
		if !s.done || now.Sub(s.at) < p.window {
			kept = append(kept, s)
		}
	}
	clear(p.slots[len(kept):])
	p.slots = kept
}

// nextExpiryLocked is how long until the oldest answered slot expires; 0 if
// every slot is still in flight.
func (p *pacer) nextExpiryLocked(now time.Time) time.Duration {
	var next time.Duration
	for _, s := range p.slots {
		if s.done {
			if d := s.at.Add(p.window).Sub(now); next == 0 || d < next {
				next = d
			}
		}
	}
	if next < 0 {
		return 0
	}
	return next
}

// blockUntil stops every request until t (a 10006's reset time, or a
// backoff when Bybit gave none). Earlier times never shorten a block.
func (p *pacer) blockUntil(t time.Time) {
	if p.unlimited() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if t.After(p.blocked) {
		p.blocked = t
	}
}

// observe follows Bybit's headers: when Bybit says fewer requests are left
// than this pacer counts (another client, or another replica, spends the same
// budget), the difference is booked as answered now, so this process slows
// down before Bybit answers 10006. An exhausted window blocks until its reset.
func (p *pacer) observe(rl bybit.RateLimit) {
	if p.unlimited() || !rl.Known {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.pruneLocked(now)
	if extra := (p.limit - len(p.slots)) - rl.Remaining; extra > 0 {
		for range extra {
			p.slots = append(p.slots, &slot{done: true, at: now})
		}
	}
	if rl.Remaining == 0 && rl.Reset.After(now) && rl.Reset.After(p.blocked) {
		p.blocked = rl.Reset
	}
}

// sleepOrChange waits for d (forever if d is 0), for changed to close, or for
// ctx to end.
func sleepOrChange(ctx context.Context, d time.Duration, changed <-chan struct{}) error {
	var timer <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer:
	case <-changed:
	}
	return nil
}
