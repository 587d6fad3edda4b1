package worker

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// Rate is N requests per Per. The zero Rate means unlimited.
type Rate struct {
	N   int
	Per time.Duration
}

// Unlimited reports whether the rate imposes no limit.
func (r Rate) Unlimited() bool { return r.N <= 0 || r.Per <= 0 }

func (r Rate) String() string {
	if r.Unlimited() {
		return "off"
	}
	return fmt.Sprintf("%d/%s", r.N, r.Per)
}

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
	// off: no limit on the count; fixed at creation (limit itself may be
	// lowered by the headers, under mu). An off pacer still holds every
	// request while Bybit says its window is exhausted (a 10006, or headers
	// with nothing remaining): only a nil pacer never waits.
	off    bool
	limit  int
	window time.Duration
	// share is BYBIT_LIMIT_SHARE for a budget of Bybit's; 0 for the IP
	// limit, which no header reports.
	share float64
	// learn: the limit follows the X-Bapi-Limit of every answer, up as
	// well as down (a budget of Bybit's; the IP limit has no header).
	// ceiling, when above 0, is the explicit limit (BYBIT_LIMITS, an
	// account's limits, after the share) it never exceeds.
	learn   bool
	ceiling int
	// onLimit, when set, is told every new limit (under mu: in order).
	onLimit func(limit int)
	now     func() time.Time

	mu      sync.Mutex
	slots   []*slot
	blocked time.Time     // no request before this (a 10006, exhausted headers)
	changed chan struct{} // closed and replaced whenever a slot is freed
}

type slot struct {
	sent   bool // the request went out (a reserved slot may wait for a request slot)
	sentAt time.Time
	done   bool
	at     time.Time
}

func newPacer(r Rate, now func() time.Time) *pacer {
	return &pacer{limit: r.N, window: r.Per, off: r.Unlimited(), now: now, changed: make(chan struct{})}
}

// shareOf is the part of a documented limit one of several replicas may use
// (BYBIT_LIMIT_SHARE); never less than one request per window.
func shareOf(limit int, share float64) int {
	if limit <= 0 || share <= 0 || share >= 1 {
		return limit
	}
	return max(1, int(float64(limit)*share))
}

// blocking reports whether requests may have to wait at all: a nil pacer
// (no budget) never does; an off one does only while blocked.
func (p *pacer) blocking() bool { return p != nil }

// acquire waits until a request may be sent and returns the function that
// records its answer time, and how long it waited.
func (p *pacer) acquire(ctx context.Context) (release func(), waited time.Duration, err error) {
	start := p.now()
	for {
		if release := p.take(); release != nil {
			return release, p.now().Sub(start), nil
		}
		if err := p.waitRoom(ctx); err != nil {
			return nil, p.now().Sub(start), err
		}
	}
}

// take lets one request through if the budget has room now: it returns the
// function that records the answer, or nil.
func (p *pacer) take() (release func()) {
	got := p.reserve(1)
	switch {
	case got == nil:
		return nil
	case len(got) == 0: // unlimited
		return func() {}
	}
	p.markSent(got)
	return func() { p.answered(got) }
}

// waitRoom waits until the budget may have room. Room that freed since take
// found none (a slot expired meanwhile) returns at once: that change has
// happened and will not be signalled again.
func (p *pacer) waitRoom(ctx context.Context) error {
	free, wait, changed := p.room()
	if free > 0 {
		return ctx.Err()
	}
	return sleepOrChange(ctx, wait, changed, nil)
}

// unlimitedRoom stands for "as many as asked" from an unlimited pacer.
const unlimitedRoom = 1 << 30

// room reports how many requests may go now; when none, how long until one
// may (0: when an answer arrives), and a channel closed at the next change.
func (p *pacer) room() (free int, wait time.Duration, changed <-chan struct{}) {
	return p.roomOver(0)
}

// above reports whether more than keep requests may go now; when not, how
// long until that may change (0: when an answer arrives) and a channel
// closed at the next change.
func (p *pacer) above(keep int) (ok bool, wait time.Duration, changed <-chan struct{}) {
	free, wait, changed := p.roomOver(keep)
	return free > 0, wait, changed
}

// roomOver reports how many requests beyond keep may go now; when none, how
// long until one may (0: when an answer arrives), and a channel closed at
// the next change.
func (p *pacer) roomOver(keep int) (free int, wait time.Duration, changed <-chan struct{}) {
	if !p.blocking() {
		return unlimitedRoom, 0, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.pruneLocked(now)
	switch {
	case now.Before(p.blocked):
		return 0, p.blocked.Sub(now), p.changed
	case p.off:
		return unlimitedRoom, 0, nil
	case p.liveLocked(now) < p.limit-keep:
		return p.limit - keep - p.liveLocked(now), 0, p.changed
	}
	return 0, p.nextExpiryLocked(now), p.changed
}

// requestsPer is how many requests of up to size orders use a whole
// budget's limit in a window of d (at least one window's).
func (p *pacer) requestsPer(d time.Duration, size int) int {
	if !p.blocking() {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.off {
		return 0
	}
	windows := max(1, int((d+p.window-1)/p.window))
	return windows * ((p.limit + size - 1) / max(size, 1))
}

// reserve takes up to n slots that are free now; none if the budget is spent
// or blocked. An unlimited pacer that is not blocked returns an empty,
// non-nil slice.
func (p *pacer) reserve(n int) []*slot {
	if !p.blocking() {
		return []*slot{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.pruneLocked(now)
	if now.Before(p.blocked) {
		return nil
	}
	if p.off {
		return []*slot{}
	}
	n = min(n, p.limit-p.liveLocked(now))
	if n <= 0 {
		return nil
	}
	got := make([]*slot, n)
	for i := range got {
		got[i] = &slot{}
		p.slots = append(p.slots, got[i])
	}
	return got
}

// markSent records that the requests of these slots went out.
func (p *pacer) markSent(slots []*slot) {
	p.mark(slots, false, func(s *slot, now time.Time) { s.sent, s.sentAt = true, now })
}

// answered dates reserved slots by their answer: they expire a window later.
func (p *pacer) answered(slots []*slot) {
	p.mark(slots, true, func(s *slot, now time.Time) { s.done, s.at = true, now })
}

// mark applies set to each slot at the pacer's now, under its lock; wake
// tells those waiting for room to look again.
func (p *pacer) mark(slots []*slot, wake bool, set func(s *slot, now time.Time)) {
	if len(slots) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for _, s := range slots {
		set(s, now)
	}
	if wake {
		p.wakeLocked()
	}
}

// unreserve gives back slots that were never used.
func (p *pacer) unreserve(slots []*slot) {
	if len(slots) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.slots[:0]
	for _, s := range p.slots {
		if !slices.Contains(slots, s) {
			kept = append(kept, s)
		}
	}
	clear(p.slots[len(kept):])
	p.slots = kept
	p.wakeLocked()
}

func (p *pacer) wakeLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// pruneLocked forgets the answered slots that no longer count: expired here,
// and older than a window before every request in flight was sent. An
// expired slot is kept while a request sent less than a window after it is
// in flight: the exchange may have counted it in that request's window, and
// observe must count it too, or it would book it again as another client's.
func (p *pacer) pruneLocked(now time.Time) {
	horizon := now
	for _, s := range p.slots {
		if s.sent && !s.done && s.sentAt.Before(horizon) {
			horizon = s.sentAt
		}
	}
	kept := p.slots[:0]
	for _, s := range p.slots {
		if !s.done || horizon.Sub(s.at) < p.window {
			kept = append(kept, s)
		}
	}
	clear(p.slots[len(kept):])
	p.slots = kept
}

// liveLocked is how many slots count against the limit now: in flight, or
// answered less than a window ago (pruneLocked keeps some expired ones).
func (p *pacer) liveLocked(now time.Time) int {
	n := 0
	for _, s := range p.slots {
		if !s.done || now.Sub(s.at) < p.window {
			n++
		}
	}
	return n
}

// nextExpiryLocked is how long until the oldest live answered slot expires;
// 0 if every live slot is still in flight.
func (p *pacer) nextExpiryLocked(now time.Time) time.Duration {
	var next time.Duration
	for _, s := range p.slots {
		if s.done {
			if d := s.at.Add(p.window).Sub(now); d > 0 && (next == 0 || d < next) {
				next = d
			}
		}
	}
	return next
}

// blockUntil stops every request until t (a 10006's reset time, or a
// backoff when Bybit gave none). Earlier times never shorten a block. It
// holds an unlimited pacer too: Bybit's answer is what counts.
func (p *pacer) blockUntil(t time.Time) {
	if !p.blocking() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if t.After(p.blocked) {
		p.blocked = t
	}
}

// observe follows Bybit's headers of a request sent at sentAt. Bybit had
// seen limit − Remaining requests in its window when it answered; this
// process counts its requests that can have been in that window: those sent
// and not answered, and those answered less than a window before sentAt
// (counting from now instead would forget requests that expired here after
// Bybit counted them). When Bybit saw more, another client (or replica)
// spends the same budget, and the difference is booked as answered now,
// before the next request goes out, so this process slows down instead of
// running into 10006. An exhausted window blocks until its reset, also
// when this process counts nothing (rl.Reset is in the local clock: the
// client converted it).
func (p *pacer) observe(rl bybit.RateLimit, sentAt time.Time) {
	if !p.blocking() || !rl.Known {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if p.off {
		p.blockAtResetLocked(rl, now)
		return
	}
	seen := 0
	for _, s := range p.slots {
		if (s.sent && !s.done) || (s.done && sentAt.Sub(s.at) < p.window) {
			seen++
		}
	}
	p.pruneLocked(now)
	p.learnLocked(rl.Limit)
	// Only what exceeds the other replicas' shares is booked: Remaining
	// below this process's share of the window means someone overspends.
	for range (p.limit - rl.Remaining) - seen {
		p.slots = append(p.slots, &slot{done: true, at: now})
	}
	p.blockAtResetLocked(rl, now)
}

// learnLocked paces to the limit Bybit reports for this budget (its share
// of it), up as well as down, never above an explicit ceiling. A raised
// limit wakes every waiter: there is room now.
func (p *pacer) learnLocked(reported int) {
	if !p.learn || reported <= 0 {
		return
	}
	limit := shareOf(reported, p.share)
	if p.ceiling > 0 {
		limit = min(limit, p.ceiling)
	}
	if limit == p.limit {
		return
	}
	raised := limit > p.limit
	p.limit = limit
	if p.onLimit != nil {
		p.onLimit(limit)
	}
	if raised {
		p.wakeLocked()
	}
}

func (p *pacer) blockAtResetLocked(rl bybit.RateLimit, now time.Time) {
	if rl.Remaining == 0 && rl.Reset.After(now) && rl.Reset.After(p.blocked) {
		p.blocked = rl.Reset
	}
}
