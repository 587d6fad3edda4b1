package worker

import (
	"context"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// cancelAll carries out one cancel-all request: calls to
// POST /v5/order/cancel-all, repeated for futures while an answer comes back
// full (500 orders), each paced by the cancel-all budget and the IP limit.
// One result lists every order cancelled, also when a later call failed.
func (w *Worker) cancelAll(j *job, a *account) {
	ctx, cancel := w.untilStopping()
	defer cancel()
	req := bybit.CancelAllRequest{
		Category: j.all.Category, Symbol: j.all.Symbol, BaseCoin: j.all.BaseCoin, SettleCoin: j.all.SettleCoin,
		OrderFilter: j.all.OrderFilter, StopOrderType: j.all.StopOrderType,
	}
	// What earlier deliveries cancelled is read back, what this one
	// cancels is recorded call by call: finish lists all of it.
	if w.startProgress(ctx, j) != nil {
		w.release(j, 0, "shutdown")
		return
	}
	w.conclude(j, w.cancelAllRun(ctx, j, a, req, nil))
}

// conclude finishes or releases a cancel-all's job by the run's decision.
func (w *Worker) conclude(j *job, d decision) {
	if d.action == actRelease {
		w.release(j, d.delay, d.reason)
		return
	}
	w.finish(j, d)
}

// cancelAllRun makes the calls of one cancel-all (req) until an answer comes
// back short or the outcome is decided: actFinish with the result, or
// actRelease (stopping, or the retry budget spent). Every call is recorded
// in the job's progress, each order as ref makes it (nil: id and link id).
func (w *Worker) cancelAllRun(ctx context.Context, j *job, a *account, req bybit.CancelAllRequest, ref func(bybit.CancelledOrder) messages.OrderRef) decision {
	w.lanesMu.Lock()
	p := w.pacerForLocked(a, "cancel-all", req.Category)
	w.lanesMu.Unlock()
	futures := req.Category == messages.CategoryLinear || req.Category == messages.CategoryInverse
	if ref == nil {
		ref = func(o bybit.CancelledOrder) messages.OrderRef {
			return messages.OrderRef{OrderID: o.OrderID, OrderLinkID: o.OrderLinkID}
		}
	}
	shutdown := decision{action: actRelease, reason: "shutdown"}
	queued := time.Now()
	for {
		if w.possiblyRedelivered(j) {
			// Like a lane's dispatch: another consumer may hold the
			// request; release lets it go, sending nothing more.
			return decision{action: actRelease, reason: "possibly redelivered"}
		}
		if age := w.now().Sub(j.requestTime); age > w.cfg.MaxAge {
			return w.failed(j, "older than WORKER_MAX_AGE ("+w.cfg.MaxAge.String()+") before it could finish")
		}
		res, sent, err := w.cancelAllCall(ctx, j, a, p, req)
		j.rateLimitWait += time.Since(queued)
		if !sent {
			// Stopping before this call went out. The release records
			// that every call so far is recorded, for the redelivery.
			return shutdown
		}
		if err == nil {
			w.keyWorks(a)
			orders := make([]messages.OrderRef, len(res.Orders))
			for i, o := range res.Orders {
				orders[i] = ref(o)
			}
			w.recordCall(j, orders)
			if futures && len(res.Orders) >= bybit.MaxCancelAll {
				queued = time.Now()
				continue // more may be left
			}
			r := w.baseResult(j)
			r.Status = messages.StatusCancelled
			r.RetCode = new(0)
			r.ExchangeTime = res.Time
			return decision{action: actFinish, result: r}
		}
		if bybit.MayHaveApplied(err) {
			w.recordLost(j)
		}
		d := w.decide(j, bybit.CancelOrderResult{}, err)
		switch d.action {
		case actFinish:
			return d
		case actRelease:
			w.metrics.retries.WithLabelValues(d.reason).Inc()
			return d
		}
		if w.waitRetry(ctx, j, a, p, d) != nil {
			return shutdown
		}
		queued = time.Now()
	}
}

// waitRetry waits out a retry decision of a call paced by p: a rate limit
// blocks the budget (or the IP pacer) until its reset, a clock skew
// resyncs. It fails only when ctx ends first.
func (w *Worker) waitRetry(ctx context.Context, j *job, a *account, p *pacer, d decision) error {
	w.metrics.retries.WithLabelValues(d.reason).Inc()
	switch d.class {
	case bybit.ClassRateLimited:
		// Like a lane's request: the budget waits for the reset (the
		// decision's delay ends there too).
		w.rateLimited(j, p, d)
	case bybit.ClassIPRateLimited:
		w.stats.RateLimited.Add(1)
		w.ipPacer.blockUntil(d.rateLimitReset)
	case bybit.ClassClockSkew:
		w.resync(a, j.sentAt)
	}
	return sleepCtx(ctx, d.delay)
}

// cancelAllCall waits for budget and makes one call; sent is false when the
// worker stopped first.
func (w *Worker) cancelAllCall(ctx context.Context, j *job, a *account, p *pacer, req bybit.CancelAllRequest) (bybit.CancelAllResult, bool, error) {
	var res bybit.CancelAllResult
	sent, err := w.paced(ctx, p, true, "cancel-all", req.Category, func() (bybit.RateLimit, error) {
		j.attempts++
		j.sentAt = w.now()
		var err error
		res, err = a.client.CancelAll(w.sendCtx, req)
		rl := res.RateLimit
		if err != nil {
			rl, _ = bybit.RateLimitOf(err)
		}
		return rl, err
	})
	if !sent {
		return bybit.CancelAllResult{}, false, nil
	}
	return res, true, err
}

// paced makes one exchange call once the ban gate, the budget p, the IP limit
// and (with slot) one of the WORKER_CONCURRENCY request slots allow; sent is
// false when ctx ended first. The answer goes through afterRequest, like a
// lane's: it books the rate-limit state (an exhausted window blocks p until
// its reset), starts an IP-ban pause, ends a ban probe and counts the request.
func (w *Worker) paced(ctx context.Context, p *pacer, slot bool, endpoint, category string, call func() (bybit.RateLimit, error)) (sent bool, err error) {
	var probe bool
	var release func()
	for {
		if probe, err = w.gate.wait(ctx); err != nil {
			return false, err
		}
		if release = p.take(); release != nil {
			break
		}
		// Budget spent: wait for it without the probe, as a lane does.
		w.handBackProbe(probe)
		if err := p.waitRoom(ctx); err != nil {
			return false, err
		}
	}
	releaseIP, _, err := w.ipPacer.acquire(ctx)
	if err != nil {
		release()
		w.handBackProbe(probe)
		return false, err
	}
	if slot {
		select {
		case w.slots <- struct{}{}:
		case <-ctx.Done():
			release()
			releaseIP()
			w.handBackProbe(probe)
			return false, ctx.Err()
		}
		w.metrics.inFlight.Inc()
	}
	if w.fleet.warm(ctx) != nil || !w.fleet.mayCall(ctx) {
		// This replica is no longer the active one: nothing new goes out.
		release()
		releaseIP()
		if slot {
			<-w.slots
			w.metrics.inFlight.Dec()
		}
		w.handBackProbe(probe)
		return false, errNotActive
	}
	start := time.Now()
	rl, err := call()
	w.afterRequest(p, endpoint, category, probe, start, rl, err, func() {
		release()
		releaseIP()
		if slot {
			<-w.slots
			w.metrics.inFlight.Dec()
		}
	})
	return true, err
}
