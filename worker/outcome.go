package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// action is what happens to a held message after an exchange attempt.
type action int

const (
	// actFinish publishes the result, then acks (or terminates) the message.
	actFinish action = iota
	// actRetry queues the message again after delay (0: at once, at the
	// front of its lane).
	actRetry
	// actRelease gives the message back with NakWithDelay(delay): this
	// delivery's retry budget is spent.
	actRelease
)

// decision is the outcome of one attempt.
type decision struct {
	action action
	result messages.Result
	delay  time.Duration
	// reason names a retry or release for logs and metrics.
	reason string
	// class is the exchange error's class; ClassPermanent on success.
	class bybit.Class
	// rateLimitReset is set for rate-limited answers: the budget the
	// attempt spent is blocked until then (delay is the time until it).
	rateLimitReset time.Time
}

// decide is the one place that maps an exchange answer to a status and a
// JetStream action. It is pure apart from the job's retry bookkeeping.
func (w *Worker) decide(j *job, res bybit.CancelOrderResult, err error) decision {
	now := w.now()
	if err == nil {
		r := w.baseResult(j)
		r.Status = messages.StatusCancelled
		r.RetCode = new(0)
		r.ExchangeTime = res.Time
		if res.OrderID != "" {
			r.OrderID = res.OrderID
		}
		if res.OrderLinkID != "" {
			r.OrderLinkID = res.OrderLinkID
		}
		return decision{action: actFinish, result: r}
	}

	class := bybit.ClassOf(err)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// Our own deadline ended the attempt before it was written (the
		// client reports a written one as a TransportError).
		class = bybit.ClassTransient
	}
	if bybit.MayHaveApplied(err) {
		j.ambiguous = true
	}
	var apiErr *bybit.APIError
	isAPI := errors.As(err, &apiErr)

	switch class {
	case bybit.ClassNotOpen:
		r := w.baseResult(j)
		r.Status = messages.StatusNotOpen
		r.RetCode, r.RetMsg, r.ExchangeTime = new(apiErr.RetCode), apiErr.RetMsg, apiErr.Time
		return decision{action: actFinish, result: r, class: class}

	case bybit.ClassPermanent:
		r := w.baseResult(j)
		r.Status = messages.StatusRejected
		if isAPI {
			r.RetCode, r.RetMsg, r.ExchangeTime = new(apiErr.RetCode), apiErr.RetMsg, apiErr.Time
		} else {
			r.RetMsg = err.Error()
		}
		return decision{action: actFinish, result: r, class: class}

	case bybit.ClassRateLimited:
		// Waiting for budget is not failing: no retry budget, no delivery.
		// The wait lasts until the reset Bybit named (in the local clock:
		// the client converted it), or a growing backoff without one.
		d := decision{action: actRetry, reason: "rate_limited", class: class}
		if rl, ok := bybit.RateLimitOf(err); ok && rl.Reset.After(now) {
			d.rateLimitReset = rl.Reset
		} else {
			d.rateLimitReset = now.Add(j.lane.rateLimitBackoff())
		}
		d.delay = d.rateLimitReset.Sub(now)
		return d

	case bybit.ClassIPRateLimited:
		// 10018, over Bybit's IP limit: every request of the process slows
		// down (the IP pacer is blocked), and this one waits as well, also
		// when BYBIT_IP_LIMIT is off.
		until := now.Add(j.lane.rateLimitBackoff())
		if rl, ok := bybit.RateLimitOf(err); ok && rl.Reset.After(now) {
			until = rl.Reset
		}
		return decision{action: actRetry, reason: "ip_rate_limited", class: class, rateLimitReset: until, delay: until.Sub(now)}

	case bybit.ClassClockSkew:
		j.skewRetries++
		if j.skewRetries <= 3 {
			return decision{action: actRetry, reason: "clock_skew", class: class}
		}
		// A resync that does not help is a transient failure like any other.
		return w.transient(j, err, now, class)

	case bybit.ClassIPBan:
		return decision{action: actRetry, reason: "ip_ban", class: class}
	}
	return w.transient(j, err, now, class)
}

// transient handles a failure worth retrying: back off within this delivery's
// retry budget, then release the message, and answer failed once the request
// is too old or this is its last delivery.
func (w *Worker) transient(j *job, err error, now time.Time, class bybit.Class) decision {
	j.lastErr = err
	if j.transientSince.IsZero() {
		j.transientSince = now
	}
	if now.Sub(j.requestTime) > w.cfg.MaxAge {
		return w.failed(j, fmt.Sprintf("older than WORKER_MAX_AGE (%v); last error: %v", w.cfg.MaxAge, err))
	}
	if j.backoff == nil {
		j.backoff = newRetryBackoff()
	}
	delay := j.backoff.NextBackOff()
	if now.Sub(j.transientSince) >= w.cfg.RetryBudget {
		if w.lastDelivery(j) {
			_, deliveries := j.delivery()
			return w.failed(j, fmt.Sprintf("retry budget spent on the consumer's last delivery (%d); last error: %v", deliveries, err))
		}
		return decision{action: actRelease, delay: delay, reason: "retry_budget", class: class}
	}
	return decision{action: actRetry, delay: delay, reason: "transient", class: class}
}

func (w *Worker) failed(j *job, lastError string) decision {
	r := w.baseResult(j)
	r.Status = messages.StatusFailed
	r.LastError = lastError
	var apiErr *bybit.APIError
	if errors.As(j.lastErr, &apiErr) {
		r.RetCode, r.RetMsg = new(apiErr.RetCode), apiErr.RetMsg
	}
	return decision{action: actFinish, result: r}
}

func (w *Worker) lastDelivery(j *job) bool {
	_, deliveries := j.delivery()
	return w.consumer.MaxDeliver > 0 && deliveries >= uint64(w.consumer.MaxDeliver)
}

func newRetryBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0
	return b
}

func (w *Worker) baseResult(j *job) messages.Result {
	if j.all != nil {
		return messages.NewCancelAllResult(*j.all, j.requestID, j.seq, j.requestTime)
	}
	return messages.NewResult(j.req, j.requestID, j.seq, j.requestTime)
}
