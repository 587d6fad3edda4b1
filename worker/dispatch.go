package worker

import (
	"context"
	"errors"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// lane returns the queue of an (account, category), starting its dispatcher
// on first use. Accounts of one limit group (one Bybit UID) share a pacer.
func (w *Worker) lane(a *account, category string) *lane {
	key := laneKey{account: a.name, category: category}
	w.lanesMu.Lock()
	defer w.lanesMu.Unlock()
	if l, ok := w.lanes[key]; ok {
		return l
	}
	var batch *pacer
	if w.cfg.Batch {
		batch = w.gw.pacer(a, budget{endpointCancelBatch, category})
	}
	l := newLane(key, a, w.gw.pacer(a, budget{endpointCancel, category}), batch)
	w.lanes[key] = l
	w.laneWG.Add(1)
	go w.dispatch(l)
	return l
}

// dispatch takes work off one lane as budget allows: the ban gate, then the
// single-cancel budget or, when that is spent, the batch budget (both are
// spent, so a burst drains at their sum), then the process-wide IP limit and
// one of the WORKER_CONCURRENCY request slots.
func (w *Worker) dispatch(l *lane) {
	defer w.laneWG.Done()
	ctx, cancel := w.untilStopping()
	defer cancel()
	for l.waitWork(ctx) {
		if w.fleet.warm(ctx) != nil {
			return
		}
		probe, err := w.gw.enterLane(ctx)
		if errors.Is(err, errBanRelease) {
			w.banRelease(l)
			continue
		}
		if err != nil {
			return
		}
		if !w.fleet.mayStart() {
			w.standBy(l, probe)
			continue
		}
		p, slots, units := w.nextRequest(l)
		if len(units) == 0 {
			w.gw.handBack(probe)
			if w.waitBudget(ctx, l) != nil {
				return
			}
			continue
		}
		units = w.dropExpired(units)
		if len(units) == 0 {
			// Nothing to send: a probe proves nothing without a request.
			p.unreserve(slots)
			w.gw.handBack(probe)
			continue
		}
		if len(slots) > len(units) {
			p.unreserve(slots[len(units):])
			slots = slots[:len(units)]
		}
		b := budget{endpointCancel, l.key.category}
		if p == l.batch {
			b.endpoint = endpointCancelBatch
		}
		ps, err := w.gw.admit(ctx, b, p, slots, probe, true)
		if err != nil {
			w.requeueUnits(units)
			if errors.Is(err, errBanned) {
				continue
			}
			return
		}
		if units = w.lastLook(ps, units); len(units) == 0 {
			continue
		}
		ps.send()
		w.waited(l, units)
		if p == l.batch {
			go w.sendBatch(l, units, ps)
		} else {
			go w.sendSingle(l, units[0], ps)
		}
	}
}

// standBy gives back what waits in the lane of a replica that is not (or
// no longer) the active one, and the probe it passed the gate with.
func (w *Worker) standBy(l *lane, probe bool) {
	w.gw.handBack(probe)
	for _, j := range l.drain() {
		w.giveBack(j, handOverDelay, "lease")
	}
}

// banRelease gives back what waits in the lane of a replica paused by an IP
// ban with BanRelease, for replicas on other IPs (see handOverDelay).
func (w *Worker) banRelease(l *lane) {
	for _, j := range l.drain() {
		w.giveBack(j, handOverDelay, "ip_ban")
	}
}

// lastLook is the look before sending, once the gateway admitted the
// request (ps): nothing goes when this replica's lease ended meanwhile (its
// cancels wait in their lane again), nor a copy the server may have handed
// to another consumer. It returns what to send (none: ps is given back).
func (w *Worker) lastLook(ps *pass, units []*unit) []*unit {
	if !w.fleet.mayStart() {
		ps.cancel()
		w.requeueUnits(units)
		return nil
	}
	if units = w.dropStale(units); len(units) == 0 {
		ps.cancel()
		return nil
	}
	ps.keep(len(units))
	return units
}

// waited books, for every cancel about to be sent, the time since it entered
// its lane as waiting for budget (the lane's, the IP's, a ban's or a slot).
func (w *Worker) waited(l *lane, units []*unit) {
	for _, u := range units {
		for _, j := range u.jobs {
			waited := w.now().Sub(j.queuedAt)
			j.rateLimitWait += waited
			w.metrics.rateLimitWait.WithLabelValues(l.key.category).Add(waited.Seconds())
		}
	}
}

// nextRequest reserves budget for the next request of the lane: a single
// cancel while that budget lasts (and the IP limit has more room than the
// lane's batches need, see ipKeptForBatches), else a batch sized to the
// batch budget left. It returns no units when both budgets are spent.
func (w *Worker) nextRequest(l *lane) (*pacer, []*slot, []*unit) {
	if keep := w.ipKeptForBatches(l); keep > 0 {
		if ok, _, _ := w.gw.ip.above(keep); !ok {
			return w.nextBatch(l)
		}
	}
	if got := l.single.reserve(1); got != nil {
		units := l.take(1, false)
		if len(units) == 0 {
			l.single.unreserve(got)
		}
		return l.single, got, units
	}
	return w.nextBatch(l)
}

// ipKeptForBatches is how much of the IP limit a lane's single cancels leave
// to its batches: the requests its batch budget needs over one IP window.
// Both budgets cost one unit an order, but a single takes one IP request for
// one order where a batch takes one for up to maxBatch: when the IP limit is
// the scarcer budget, singles that spend it first starve the batches for the
// rest of the IP window (a 200/s account at BYBIT_IP_LIMIT=500/5s drained
// at 1.7 × its ideal). Singles use only what the batches cannot; 0 when the
// lane has no batch to send or the IP limit is off.
func (w *Worker) ipKeptForBatches(l *lane) int {
	if l.batch == nil || l.batchOff.Load() || l.batchable() == 0 {
		return 0
	}
	return l.batch.requestsPer(w.cfg.IPLimit.Per, l.maxBatch)
}

// nextBatch reserves the batch budget for a batch of the lane's batchable
// orders, sized to the room left; no units when there is none.
func (w *Worker) nextBatch(l *lane) (*pacer, []*slot, []*unit) {
	if l.batch == nil || l.batchOff.Load() {
		return nil, nil, nil
	}
	n := min(l.batchable(), l.maxBatch)
	if n == 0 {
		return nil, nil, nil
	}
	got := l.batch.reserve(n)
	if got == nil {
		return nil, nil, nil
	}
	if len(got) > 0 { // a limited budget: no more orders than it has room for
		n = len(got)
	}
	return l.batch, got, l.take(n, true)
}

// waitBudget waits until either of the lane's budgets may have room. A
// budget that has room again by now (a slot was answered or expired since
// nextRequest found it full) returns at once: its change has already
// happened and will not be signalled again.
func (w *Worker) waitBudget(ctx context.Context, l *lane) error {
	free, wait, changed := l.single.room()
	if free > 0 {
		keep := w.ipKeptForBatches(l)
		if keep == 0 {
			return ctx.Err()
		}
		ok, ipWait, ipChanged := w.gw.ip.above(keep)
		if ok {
			return ctx.Err()
		}
		// The single budget has room, but what is left of the IP limit is
		// kept for the batches: wait for the IP budget or the batch one.
		wait, changed = ipWait, ipChanged
	}
	var bChanged <-chan struct{}
	if l.batch != nil && !l.batchOff.Load() {
		bFree, bWait, bc := l.batch.room()
		if bFree > 0 && l.batchable() > 0 {
			return ctx.Err()
		}
		if wait == 0 || (bWait > 0 && bWait < wait) {
			wait = bWait
		}
		bChanged = bc
	}
	return sleepOrChange(ctx, wait, changed, bChanged)
}

// dropExpired answers failed the cancels older than WORKER_MAX_AGE.
func (w *Worker) dropExpired(units []*unit) []*unit {
	kept := units[:0]
	for _, u := range units {
		jobs := u.jobs[:0]
		for _, j := range u.jobs {
			if w.now().Sub(j.stored) <= w.cfg.MaxAge {
				jobs = append(jobs, j)
				continue
			}
			go w.apply(j, nil, w.decide(j, event{kind: evExpired, why: "be sent"}))
		}
		if len(jobs) > 0 {
			u.jobs = jobs
			kept = append(kept, u)
		}
	}
	return kept
}

// dropStale lets go of the cancels the server may have handed to another
// consumer (see letGo) and returns the units left to send.
func (w *Worker) dropStale(units []*unit) []*unit {
	kept := units[:0]
	for _, u := range units {
		jobs := u.jobs[:0]
		for _, j := range u.jobs {
			if !w.possiblyRedelivered(j) {
				jobs = append(jobs, j)
				continue
			}
			w.letGo(j, "not sent")
			w.jobs.Done()
		}
		if len(jobs) > 0 {
			u.jobs = jobs
			kept = append(kept, u)
		}
	}
	return kept
}

func (w *Worker) requeueUnits(units []*unit) {
	for _, u := range units {
		for _, j := range u.jobs {
			if !j.lane.push(j, true) {
				w.giveBack(j, 0, "shutdown")
			}
		}
	}
}

func toRequest(c messages.Cancel) bybit.CancelOrderRequest {
	return bybit.CancelOrderRequest{Category: c.Category, Symbol: c.Symbol, OrderID: c.OrderID, OrderLinkID: c.OrderLinkID, OrderFilter: c.OrderFilter}
}

// sendSingle makes one POST /v5/order/cancel for a unit and acts on it.
func (w *Worker) sendSingle(l *lane, u *unit, ps *pass) {
	w.markSent(u)
	res, err := l.account.client.CancelOrder(w.sendCtx, toRequest(u.primary().req))
	ps.done(rateLimitOf(res.RateLimit, err), err)
	w.settle(l.single, u, res, err)
}

// sendBatch makes one POST /v5/order/cancel-batch and maps each order's
// answer back to its unit by position.
func (w *Worker) sendBatch(l *lane, units []*unit, ps *pass) {
	reqs := make([]bybit.CancelOrderRequest, len(units))
	for i, u := range units {
		w.markSent(u)
		reqs[i] = toRequest(u.primary().req)
	}
	res, err := l.account.client.CancelBatch(w.sendCtx, l.key.category, reqs)
	ps.done(rateLimitOf(res.RateLimit, err), err)
	if err != nil && w.batchRefused(l, units, err) {
		return
	}
	for i, u := range units {
		if err != nil { // the whole request failed: every order shares it
			w.settle(l.batch, u, bybit.CancelOrderResult{}, err)
			continue
		}
		it := res.Items[i]
		w.settle(l.batch, u, bybit.CancelOrderResult{OrderID: it.OrderID, OrderLinkID: it.OrderLinkID, Time: res.Time, RateLimit: res.RateLimit}, it.Err)
	}
}

// rateLimitOf is the rate-limit state a call's answer carried: its error's
// when it failed.
func rateLimitOf(answer bybit.RateLimit, err error) bybit.RateLimit {
	if err != nil {
		rl, _ := bybit.RateLimitOf(err)
		return rl
	}
	return answer
}

// batchRefused handles a cancel-batch refused as a whole, which applied
// nothing: its orders are queued again as single cancels, whose own answers
// decide their results. Where the endpoint (or the category on it) is not
// offered, the lane sends no more batches and says so once; after any other
// refusal only these orders go alone. It returns false for failures its
// orders share as before (transient, rate limits, a ban, our own context).
func (w *Worker) batchRefused(l *lane, units []*unit, err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	n := 0
	for _, u := range units {
		n += len(u.jobs)
	}
	switch c := bybit.ClassOf(err); {
	case bybit.Unavailable(err):
		if l.batchOff.CompareAndSwap(false, true) {
			w.metrics.batchUnavailable.WithLabelValues(l.key.account, categoryLabel(l.key.category)).Set(1)
			w.log.Warn("cancel-batch is not available for this account and category (Bybit's demo trading offers it for linear and option only, classic accounts not at all): this lane sends single cancels from now on",
				"account", l.key.account, "category", l.key.category, "error", err)
		}
	case c == bybit.ClassPermanent || c == bybit.ClassNotOpen:
		w.metrics.batchRefused.WithLabelValues(categoryLabel(l.key.category)).Inc()
		w.log.Warn("cancel-batch refused as a whole; its orders are retried one by one as single cancels",
			"account", l.key.account, "category", l.key.category, "orders", n, "error", err)
		for _, u := range units {
			for _, j := range u.jobs {
				j.noBatch = true // not queued now: the lane's counts stay true
			}
		}
	default:
		return false
	}
	// Back to the front of the lane, in the order they were taken.
	for i := len(units) - 1; i >= 0; i-- {
		for k := len(units[i].jobs) - 1; k >= 0; k-- {
			j := units[i].jobs[k]
			if !j.lane.push(j, true) {
				w.giveBack(j, 0, "shutdown")
			}
		}
	}
	return true
}

func (w *Worker) markSent(u *unit) {
	now := w.now()
	for _, j := range u.jobs {
		j.attempts++
		j.sentAt = now
	}
}

// settle decides and acts for every cancel of a unit: they share the
// exchange's answer.
func (w *Worker) settle(p *pacer, u *unit, res bybit.CancelOrderResult, err error) {
	for _, j := range u.jobs {
		w.apply(j, p, w.decide(j, answered(res, err)))
	}
}
