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

// action is what becomes of a held message: the JetStream side of a decision.
type action int

const (
	// actAck publishes the result, then DoubleAcks the message.
	actAck action = iota
	// actTerm publishes the result, then terminates the message (invalid,
	// failed): no delivery can change its answer.
	actTerm
	// actNak gives the message back with NakWithDelay(delay) for a later
	// delivery, without a result.
	actNak
	// actRequeue tries again in this delivery after delay (0: at once, at
	// the front of its lane).
	actRequeue
)

func (a action) String() string {
	return [...]string{"ack", "term", "nak", "requeue"}[a]
}

// event is what happened to a held request, as decide sees it.
type event struct {
	kind eventKind
	// answer and err are the exchange's (evAnswer); err is also why the
	// request was refused (evInvalid).
	answer bybit.CancelOrderResult
	err    error
	// why names a give-back (evGiveBack) or what an expired request waited
	// for (evExpired).
	why   string
	delay time.Duration // evGiveBack: NakWithDelay's
}

type eventKind int

const (
	// evAnswer: an exchange call came back (or failed on its way).
	evAnswer eventKind = iota
	// evInvalid: the request cannot be sent (undecodable, invalid, an
	// unknown account); the base result already says why.
	evInvalid
	// evExpired: the request grew older than MaxAge before it was sent or
	// finished.
	evExpired
	// evGiveBack: this process gives the message back unsent (stopping, an
	// IP ban with BanRelease).
	evGiveBack
)

// answered is an exchange answer (or failure) for decide.
func answered(res bybit.CancelOrderResult, err error) event {
	return event{kind: evAnswer, answer: res, err: err}
}

// request is what decide knows of the held request.
type request struct {
	// base is the result's fields that name the request (for evInvalid,
	// the invalid result itself).
	base        messages.Result
	deliveries  uint64
	requestTime time.Time
}

// policy is the configuration decide applies.
type policy struct {
	maxAge      time.Duration
	retryBudget time.Duration
	// maxDeliver is the consumer's MaxDeliver (<= 0: unlimited).
	maxDeliver int
	// rateLimitBackoff is the wait after a 10006 or 10018 that names no
	// reset: growing while they repeat (the lane's).
	rateLimitBackoff func() time.Duration
}

func (p policy) lastDelivery(deliveries uint64) bool {
	return p.maxDeliver > 0 && deliveries >= uint64(p.maxDeliver)
}

// retryState is a request's retry bookkeeping across the attempts of one
// delivery: decide reads and advances it.
type retryState struct {
	transientSince time.Time
	skewRetries    int
	lastErr        error
	backoff        *backoff.ExponentialBackOff
}

// decision is the outcome of what happened.
type decision struct {
	action action
	// result is published for actAck and actTerm.
	result messages.Result
	delay  time.Duration
	// ambiguous: the attempt may have reached the exchange without its
	// answer reaching us.
	ambiguous bool
	// reason names a requeue or a nak for logs and metrics.
	reason string
	// class is the exchange error's class; ClassPermanent on success.
	class bybit.Class
	// rateLimitReset is set for rate-limited answers: the budget the
	// attempt spent is blocked until then (delay is the time until it).
	rateLimitReset time.Time
}

// decide is the one place that maps what happened to a request onto a
// status and a JetStream action. It touches nothing but the retry state rs.
func decide(ev event, req request, rs *retryState, pol policy, now time.Time) decision {
	switch ev.kind {
	case evInvalid:
		return decision{action: actTerm, result: req.base}
	case evExpired:
		msg := fmt.Sprintf("older than WORKER_MAX_AGE (%v) before it could %s", pol.maxAge, ev.why)
		if rs.lastErr != nil {
			msg += "; last error: " + rs.lastErr.Error()
		}
		return failed(req, rs, msg)
	case evGiveBack:
		if pol.lastDelivery(req.deliveries) {
			// Nothing would redeliver it: answer it instead, so that it
			// is accounted for.
			return failed(req, rs, "released on the consumer's last delivery: "+ev.why)
		}
		return decision{action: actNak, delay: ev.delay, reason: ev.why}
	}
	if ev.err == nil {
		r := req.base
		r.Status = messages.StatusCancelled
		r.RetCode = new(0)
		r.ExchangeTime = ev.answer.Time
		if ev.answer.OrderID != "" {
			r.OrderID = ev.answer.OrderID
		}
		if ev.answer.OrderLinkID != "" {
			r.OrderLinkID = ev.answer.OrderLinkID
		}
		return decision{action: actAck, result: r}
	}
	d := decideError(ev.err, req, rs, pol, now)
	d.ambiguous = bybit.MayHaveApplied(ev.err)
	return d
}

// decideError maps an exchange error by its class.
func decideError(err error, req request, rs *retryState, pol policy, now time.Time) decision {
	class := bybit.ClassOf(err)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// Our own deadline ended the attempt before it was written (the
		// client reports a written one as a TransportError).
		class = bybit.ClassTransient
	}
	switch class {
	case bybit.ClassNotOpen, bybit.ClassPermanent:
		r := req.base
		r.Status = messages.StatusRejected
		if class == bybit.ClassNotOpen {
			r.Status = messages.StatusNotOpen
		}
		var apiErr *bybit.APIError
		if errors.As(err, &apiErr) {
			r.RetCode, r.RetMsg, r.ExchangeTime = new(apiErr.RetCode), apiErr.RetMsg, apiErr.Time
		} else {
			r.RetMsg = err.Error()
		}
		return decision{action: actAck, result: r, class: class}

	case bybit.ClassRateLimited, bybit.ClassIPRateLimited:
		// Waiting for budget is not failing: no retry budget, no delivery.
		// The wait lasts until the reset Bybit named (in the local clock:
		// the client converted it), or a growing backoff without one. A
		// 10018 (over Bybit's IP limit) slows every request of the
		// process, also when BYBIT_IP_LIMIT is off.
		reason := "rate_limited"
		if class == bybit.ClassIPRateLimited {
			reason = "ip_rate_limited"
		}
		rl, ok := bybit.RateLimitOf(err)
		until := rl.Reset
		if !ok || !rl.Reset.After(now) {
			until = now.Add(pol.rateLimitBackoff())
		}
		return decision{action: actRequeue, reason: reason, class: class, rateLimitReset: until, delay: until.Sub(now)}

	case bybit.ClassClockSkew:
		rs.skewRetries++
		if rs.skewRetries <= 3 {
			return decision{action: actRequeue, reason: "clock_skew", class: class}
		}
		// A resync that does not help is a transient failure like any other.

	case bybit.ClassIPBan:
		return decision{action: actRequeue, reason: "ip_ban", class: class}
	}
	return transient(err, req, rs, pol, now, class)
}

// transient handles a failure worth retrying: back off within this delivery's
// retry budget, then give the message back, and answer failed once the
// request is too old or this is its last delivery.
func transient(err error, req request, rs *retryState, pol policy, now time.Time, class bybit.Class) decision {
	rs.lastErr = err
	if rs.transientSince.IsZero() {
		rs.transientSince = now
	}
	if now.Sub(req.requestTime) > pol.maxAge {
		return failed(req, rs, fmt.Sprintf("older than WORKER_MAX_AGE (%v); last error: %v", pol.maxAge, err))
	}
	if rs.backoff == nil {
		rs.backoff = newRetryBackoff()
	}
	delay := rs.backoff.NextBackOff()
	if now.Sub(rs.transientSince) >= pol.retryBudget {
		if pol.lastDelivery(req.deliveries) {
			return failed(req, rs, fmt.Sprintf("retry budget spent on the consumer's last delivery (%d); last error: %v", req.deliveries, err))
		}
		return decision{action: actNak, delay: delay, reason: "retry_budget", class: class}
	}
	return decision{action: actRequeue, delay: delay, reason: "transient", class: class}
}

// failed answers a request that no retry will help.
func failed(req request, rs *retryState, lastError string) decision {
	r := req.base
	r.Status = messages.StatusFailed
	r.LastError = lastError
	var apiErr *bybit.APIError
	if errors.As(rs.lastErr, &apiErr) {
		r.RetCode, r.RetMsg = new(apiErr.RetCode), apiErr.RetMsg
	}
	return decision{action: actTerm, result: r}
}

// concluded publishes a result put together from several answers (a
// flatten's): a failed or invalid one terminates the message, as decide's
// would; any other acks it.
func concluded(r messages.Result) decision {
	if r.Status == messages.StatusFailed || r.Status == messages.StatusInvalid {
		return decision{action: actTerm, result: r}
	}
	return decision{action: actAck, result: r}
}

// publishes reports whether the decision ends the request with a result.
func (d decision) publishes() bool { return d.action == actAck || d.action == actTerm }
