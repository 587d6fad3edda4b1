package worker

import (
	"context"

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
		w.giveBack(j, 0, "shutdown")
		return
	}
	w.apply(j, nil, w.cancelAllRun(ctx, j, a, req, nil))
}

// cancelAllRun makes the calls of one cancel-all (req) until an answer comes
// back short or the outcome is decided, and returns that decision for the
// caller to apply: a result to publish, or a give-back (stopping, or the
// retry budget spent). Every call is recorded in the job's progress, each
// order as ref makes it (nil: id and link id).
func (w *Worker) cancelAllRun(ctx context.Context, j *job, a *account, req bybit.CancelAllRequest, ref func(bybit.CancelledOrder) messages.OrderRef) decision {
	p := w.gw.pacer(a, budget{endpointCancelAll, req.Category})
	futures := req.Category == messages.CategoryLinear || req.Category == messages.CategoryInverse
	if ref == nil {
		ref = func(o bybit.CancelledOrder) messages.OrderRef {
			return messages.OrderRef{OrderID: o.OrderID, OrderLinkID: o.OrderLinkID}
		}
	}
	queued := w.now()
	for {
		if w.possiblyRedelivered(j) {
			// Like a lane's dispatch: another consumer may hold the
			// request; the give-back lets it go, sending nothing more.
			return w.decide(j, event{kind: evGiveBack, why: "possibly redelivered"})
		}
		if age := w.now().Sub(j.stored); age > w.cfg.MaxAge {
			return w.decide(j, event{kind: evExpired, why: "finish"})
		}
		res, sent, err := w.cancelAllCall(ctx, j, a, p, req)
		j.rateLimitWait += w.now().Sub(queued)
		if !sent {
			// Stopping before this call went out. The release records
			// that every call so far is recorded, for the redelivery.
			return w.decide(j, event{kind: evGiveBack, why: "shutdown"})
		}
		if err == nil {
			w.keyWorks(a)
			orders := make([]messages.OrderRef, len(res.Orders))
			for i, o := range res.Orders {
				orders[i] = ref(o)
			}
			w.recordCall(j, orders)
			if futures && len(res.Orders) >= bybit.MaxCancelAll {
				queued = w.now()
				continue // more may be left
			}
		} else if bybit.MayHaveApplied(err) {
			w.recordLost(j)
		}
		d := w.decide(j, answered(bybit.CancelOrderResult{Time: res.Time}, err))
		if d.action != actRequeue {
			return d
		}
		if w.waitRetry(ctx, j, p, d) != nil {
			return w.decide(j, event{kind: evGiveBack, why: "shutdown"})
		}
		queued = w.now()
	}
}

// cancelAllCall waits for budget and makes one call; sent is false when the
// worker stopped first.
func (w *Worker) cancelAllCall(ctx context.Context, j *job, a *account, p *pacer, req bybit.CancelAllRequest) (bybit.CancelAllResult, bool, error) {
	var res bybit.CancelAllResult
	sent, err := w.gw.call(ctx, budget{endpointCancelAll, req.Category}, p, true, func() (bybit.RateLimit, error) {
		j.attempts++
		j.sentAt = w.now()
		var err error
		res, err = a.client.CancelAll(w.sendCtx, req)
		return rateLimitOf(res.RateLimit, err), err
	})
	if !sent {
		return bybit.CancelAllResult{}, false, nil
	}
	return res, true, err
}
