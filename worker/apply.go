package worker

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// apply carries out a decision for j; p is the budget its attempt spent (nil:
// it made none). A requeue puts a cancel back in its lane; a call that runs
// in its own goroutine (a cancel-all's, a flatten's lookup) waits with
// waitRetry instead and applies only the decision that ends it.
func (w *Worker) apply(j *job, p *pacer, d decision) {
	switch d.action {
	case actAck, actTerm:
		// Bybit answered: the key works; a cancel went through: the lane's
		// rate-limit backoff starts over.
		if l := j.lane; l != nil {
			switch d.result.Status {
			case messages.StatusCancelled:
				l.resetRateLimitBackoff()
				w.keyWorks(l.account)
			case messages.StatusNotOpen:
				w.keyWorks(l.account)
			}
		}
		w.finish(j, d)
		return
	case actNak:
		if d.reason == "retry_budget" {
			w.metrics.retries.WithLabelValues(d.reason).Inc()
			w.log.Warn("retry budget spent; released for a later delivery", j.attrs("error", j.retry.lastErr, "delay", d.delay)...)
		}
		w.release(j, d.delay, d.reason)
		return
	}
	w.metrics.retries.WithLabelValues(d.reason).Inc()
	w.retryEffects(j, p, d)
	delay := d.delay
	if d.class == bybit.ClassRateLimited {
		// The budget's block holds the lane until the reset; the request
		// waits for it at the front of its queue.
		delay = 0
	}
	w.requeue(j, delay)
}

// waitRetry carries out a requeue of a call paced by p that runs in its own
// goroutine: the retry's effects, then its delay. It fails only when ctx
// ends first.
func (w *Worker) waitRetry(ctx context.Context, j *job, p *pacer, d decision) error {
	w.metrics.retries.WithLabelValues(d.reason).Inc()
	w.retryEffects(j, p, d)
	return sleepCtx(ctx, d.delay)
}

// retryEffects is what a requeue does beyond waiting: a rate limit blocks
// the budget (or the IP pacer) until its reset, a clock skew resyncs, an IP
// ban gives back what waits when BanRelease is on.
func (w *Worker) retryEffects(j *job, p *pacer, d decision) {
	switch d.class {
	case bybit.ClassRateLimited:
		w.rateLimited(j, p, d)
	case bybit.ClassIPRateLimited:
		w.gw.blockIP(d.rateLimitReset)
		// Counted once the block is in place: a reader of the count
		// knows every later request waits.
		w.stats.RateLimited.Add(1)
		w.log.Warn("over Bybit's IP rate limit (10018); every request waits", j.attrs("until", d.rateLimitReset)...)
	case bybit.ClassClockSkew:
		w.resync(j.lane.account, j.sentAt)
	case bybit.ClassIPBan:
		if w.cfg.BanRelease && j.all == nil {
			w.releaseAllQueued(handOverDelay, "ip_ban")
			w.fleet.banReleased(w.sendCtxOr(context.Background()))
		}
	default:
		w.log.Debug("transient failure; retrying", j.attrs("error", j.retry.lastErr, "delay", d.delay)...)
	}
}

// rateLimited blocks the budget p an attempt spent until the reset of its
// 10006 (decide's rateLimitReset): every later call of that budget waits,
// whichever path makes it, also when the worker counts nothing for it.
func (w *Worker) rateLimited(j *job, p *pacer, d decision) {
	p.blockUntil(d.rateLimitReset)
	// Counted once the block is in place (see the IP limit above).
	w.stats.RateLimited.Add(1)
	w.log.Debug("rate limited; waiting for the window to reset", j.attrs("until", d.rateLimitReset)...)
}

// requeue puts j back at the front of its lane after delay.
func (w *Worker) requeue(j *job, delay time.Duration) {
	if delay <= 0 {
		if !j.lane.push(j, true) {
			w.giveBack(j, 0, "shutdown")
		}
		return
	}
	go func() {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-w.stopping:
		}
		if !j.lane.push(j, true) {
			w.giveBack(j, 0, "shutdown")
		}
	}()
}

// handOverDelay is the NakWithDelay of what a replica gives back for the
// other replicas while it may still be pulling: during an IP ban
// (BanRelease), and when its lease ended (standBy, releaseAllQueued). It
// outlasts the replica's own pull in flight (a pull waits at most
// pullInterval): given back at once, a message comes straight back into
// that pull while the server still hands this replica its messages — a
// lease that lapsed while the pin stayed here — again and again, each time
// a delivery, until its last delivery answers it failed, unsent. Another
// replica's pull takes it after; a newly pinned one waits out takeoverWait
// (as long) before it sends anyway. Not the ban pause: what is given back
// is for the other replicas now. A stop gives back at once, after its last
// pull ended (puller.pull).
const handOverDelay = pullInterval

// releaseAllQueued gives every queued message back to the consumer, for other
// replicas (on other IPs) to take during an IP ban.
func (w *Worker) releaseAllQueued(delay time.Duration, reason string) {
	w.lanesMu.Lock()
	lanes := make([]*lane, 0, len(w.lanes))
	for _, l := range w.lanes {
		lanes = append(lanes, l)
	}
	w.lanesMu.Unlock()
	for _, l := range lanes {
		for _, j := range l.drain() {
			w.giveBack(j, delay, reason)
		}
	}
}

// giveBack gives j back unsent for another delivery (or answers it on its
// last one), why naming the cause.
func (w *Worker) giveBack(j *job, delay time.Duration, why string) {
	d := w.decide(j, event{kind: evGiveBack, why: why, delay: delay})
	if d.publishes() && j.all != nil && j.prog == nil {
		// Answered on the last delivery: a cancel-all with what its
		// earlier deliveries recorded.
		w.loadProgressForRelease(j)
	}
	w.apply(j, nil, d)
}

// release gives a message back for another delivery with NakWithDelay;
// reason names why.
func (w *Worker) release(j *job, delay time.Duration, reason string) {
	defer w.jobs.Done()
	if w.possiblyRedelivered(j) {
		w.letGo(j, "not released ("+reason+")")
		return
	}
	if j.prog != nil {
		w.recordReleased(j)
	}
	msg, deliveries := j.end()
	if j.attempts == 0 && !j.ambiguous {
		w.released.put(j.seq, deliveries)
	}
	var err error
	if delay > 0 {
		err = msg.NakWithDelay(delay)
	} else {
		err = msg.Nak()
	}
	if err != nil {
		w.log.Warn("release failed; the message comes back after AckWait", "seq", j.seq, "error", err)
	}
	w.held.remove(&j.heldMsg)
}

// finish publishes the result, waits for its PubAck, then acks the request
// (terminates it, for actTerm). A publish that fails is retried with the same
// Nats-Msg-Id while the worker lives; the message stays held and heartbeated
// meanwhile.
func (w *Worker) finish(j *job, d decision) {
	defer w.jobs.Done()
	r := d.result
	if w.possiblyRedelivered(j) && r.Status == messages.StatusNotOpen {
		// The answer came after the server may have handed the request
		// to another consumer: the order may be gone because that
		// consumer's cancel landed first, whose result is the true one.
		w.letGo(j, "its not_open not stored")
		return
	}
	_, deliveries := j.delivery()
	if j.prog != nil {
		// A cancel-all lists what every call of every delivery cancelled,
		// whichever way it ends — also a run that overlaps this one.
		w.settleProgress(j)
		r.Orders = j.prog.orders
		r.OrdersComplete = new(j.prog.complete())
	}
	r.Attempts = j.attempts
	r.Ambiguous = j.ambiguous || j.handedOutNow()
	r.RateLimitWaitMs = j.rateLimitWait.Milliseconds()
	r.Deliveries = deliveries
	if !j.sentAt.IsZero() {
		r.SentAt = new(j.sentAt.UTC())
	}
	data, err := r.Marshal()
	if err != nil { // a Result always marshals; this guards a future field
		w.log.Error("encode result", "seq", j.seq, "error", err)
		return
	}
	subject := w.cfg.RejectedSubject
	if r.Acknowledged() {
		subject = w.cfg.AckSubject
	}
	ctx := w.sendCtx
	r, local, ok := w.store(ctx, j, r, subject, data)
	if !ok {
		return
	}
	w.metrics.observeResult(r, w.now())
	w.answered.put(j.seq, 1)

	msg, _ := j.end()
	if d.action == actTerm {
		reason := r.Error
		if reason == "" {
			reason = r.LastError
		}
		err = msg.TermWithReason(string(r.Status) + ": " + reason)
	} else {
		err = backoff.Retry(func() error { return msg.DoubleAck(ctx) },
			backoff.WithContext(backoff.WithMaxRetries(newRetryBackoff(), 5), ctx))
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		w.log.Warn("ack failed after the result was published; a redelivery will be acked without a second result", "seq", j.seq, "error", err)
	}
	w.held.remove(&j.heldMsg)
	w.logOutcome(j, r, local)
}

// store publishes the result r (as data) and returns what the stream keeps
// as this request's result: r, or the one an earlier delivery stored first
// (local is then r). ok is false when nothing could be stored before the
// stop: the message is given back, and its redelivery finds out (the
// Nats-Msg-Id keeps a result from being stored twice).
func (w *Worker) store(ctx context.Context, j *job, r messages.Result, subject string, data []byte) (kept messages.Result, local *messages.Result, ok bool) {
	ack, err := w.pub.publishAck(ctx, subject, data, r.MsgID())
	if err != nil {
		w.notStored(j, err)
		return r, nil, false
	}
	if !ack.Duplicate {
		return r, nil, true
	}
	stored, found := w.storedResult(ctx, j, ack.Sequence)
	if found == storedOther {
		// Another message holds this result's id (JetStream deduplicates
		// across the stream's subjects): a request published with it.
		// Every replica falls back to the same id, which no publisher can
		// know before this request was stored.
		fallback := messages.FallbackResultMsgID(j.seq, j.stored)
		w.stats.MsgIDCollisions.Add(1)
		w.metrics.msgIDCollisions.Inc()
		w.log.Error("another message in the stream holds this result's Nats-Msg-Id (a request published with a reserved id); result stored under its fallback id",
			j.attrs("msgId", r.MsgID(), "heldBySeq", ack.Sequence, "fallbackMsgId", fallback)...)
		if ack, err = w.pub.publishAck(ctx, subject, data, fallback); err != nil {
			w.notStored(j, err)
			return r, nil, false
		}
		if !ack.Duplicate {
			return r, nil, true
		}
		stored, found = w.storedResult(ctx, j, ack.Sequence)
	}
	if found != storedMine {
		return r, nil, true
	}
	// An earlier delivery stored a result first: that one is what readers
	// see, so it is what is counted, logged and acted on.
	return stored, &r, true
}

// notStored gives back a message whose result could not be stored before
// the stop.
func (w *Worker) notStored(j *job, err error) {
	w.log.Error("result not published before shutdown; the request will be redelivered", j.attrs("error", err)...)
	msg, _ := j.end()
	_ = msg.Nak()
	w.held.remove(&j.heldMsg)
}

// What storedResult found at a duplicate PubAck's sequence.
const (
	storedMine       = iota // this request's result, stored earlier
	storedUnreadable        // nothing could be read
	storedOther             // another message: its id collides with the result's
)

// storedResult reads the message the stream kept at seq (a duplicate
// PubAck's sequence): this request's result, stored by an earlier delivery,
// or another message holding the same Nats-Msg-Id. Unreadable is logged.
func (w *Worker) storedResult(ctx context.Context, j *job, seq uint64) (messages.Result, int) {
	var m *jetstream.RawStreamMsg
	err := backoff.Retry(func() error {
		s, err := w.js.Stream(ctx, w.cfg.Stream)
		if err == nil {
			m, err = s.GetMsg(ctx, seq)
		}
		return err
	}, backoff.WithContext(backoff.WithMaxRetries(newRetryBackoff(), 3), ctx))
	if err != nil {
		w.log.Warn("result already stored by an earlier delivery, and it cannot be read: counted as this delivery's", j.attrs("storedSeq", seq, "error", err)...)
		return messages.Result{}, storedUnreadable
	}
	if m.Subject != w.cfg.AckSubject && m.Subject != w.cfg.RejectedSubject {
		return messages.Result{}, storedOther
	}
	r, err := messages.DecodeResult(m.Data)
	if err != nil || r.RequestSeq != j.seq {
		return messages.Result{}, storedOther
	}
	return r, storedMine
}

// possiblyRedelivered reports whether the server may have handed j's
// delivery to another consumer: its heartbeats went unanswered too long (see
// staleRule), and it is not the consumer's last delivery (the server does not
// hand out a last delivery again).
func (w *Worker) possiblyRedelivered(j *job) bool {
	_, deliveries := j.delivery()
	return !w.policy(j).lastDelivery(deliveries) && w.held.stale(&j.heldMsg)
}

// letGo gives up a held message that the server may have handed to another
// consumer, which then answers it. Sending it too would race that consumer's
// call at the exchange, and storing what came back would race its result for
// the Nats-Msg-Id result:<seq>, which keeps whichever is stored first: an
// answer like not_open may be what the other call did, and is not the truth
// to keep. No Nak: acks name the stream sequence, not the delivery, so a Nak
// would make the server hand out again a message another consumer works on.
// Left alone, the message is redelivered AckWait after the last heartbeat the
// server heard if nobody else holds it. The caller accounts for w.jobs.
func (w *Worker) letGo(j *job, what string) {
	_, deliveries := j.end()
	if j.attempts == 0 && !j.ambiguous {
		// Nothing was sent: back straight to this process, it is not
		// ambiguous.
		w.released.put(j.seq, deliveries)
	}
	w.metrics.retries.WithLabelValues("possibly_redelivered").Inc()
	w.log.Warn("heartbeats unanswered for most of AckWait: the server may have handed this request to another consumer; "+what+", left to the current delivery",
		j.attrs("deliveries", deliveries, "ackWait", w.consumer.AckWait)...)
	w.held.remove(&j.heldMsg)
}

// logOutcome logs the stored result r; local is this delivery's own, when a
// result stored earlier was kept instead.
func (w *Worker) logOutcome(j *job, r messages.Result, local *messages.Result) {
	attrs := []any{
		"requestId", r.RequestID, "seq", r.RequestSeq, "category", r.Category, "symbol", r.Symbol,
		"orderId", r.OrderID, "orderLinkId", r.OrderLinkID, "status", r.Status,
		"attempts", r.Attempts, "ambiguous", r.Ambiguous, "rateLimitWait", j.rateLimitWait,
		"latency", w.now().Sub(j.stored),
	}
	if r.RetCode != nil {
		attrs = append(attrs, "retCode", *r.RetCode)
	}
	if j.all != nil {
		attrs = append(attrs, "cancelAll", true, "orders", len(r.Orders))
		if r.OrdersComplete != nil {
			attrs = append(attrs, "ordersComplete", *r.OrdersComplete)
		}
	}
	switch r.Status {
	case messages.StatusInvalid:
		attrs = append(attrs, "error", r.Error)
	case messages.StatusFailed:
		attrs = append(attrs, "error", r.LastError)
	case messages.StatusRejected:
		attrs = append(attrs, "retMsg", r.RetMsg)
	}
	if local != nil {
		attrs = append(attrs, "storedResultKept", true, "thisDeliveryStatus", local.Status,
			"thisDeliveryAmbiguous", local.Ambiguous, "deliveries", local.Deliveries)
		w.log.Info("cancel "+string(r.Status)+" (the result stored by an earlier delivery was kept)", attrs...)
		return
	}
	w.log.Info("cancel "+string(r.Status), attrs...)
}

// decide decides for the job j what happened to it. The job stays ambiguous
// once an attempt may have reached the exchange unanswered.
func (w *Worker) decide(j *job, ev event) decision {
	d := decide(ev, w.request(j), &j.retry, w.policy(j), w.now())
	j.ambiguous = j.ambiguous || d.ambiguous
	return d
}

func (w *Worker) request(j *job) request {
	_, deliveries := j.delivery()
	req := request{base: j.invalid, deliveries: deliveries, requestTime: j.stored}
	switch {
	case j.invalid.Status != "":
	case j.all != nil:
		req.base = messages.NewCancelAllResult(*j.all, j.requestID, j.seq, j.stored)
	default:
		req.base = messages.NewResult(j.req, j.requestID, j.seq, j.stored)
	}
	return req
}

func (w *Worker) policy(j *job) policy {
	p := policy{maxAge: w.cfg.MaxAge, retryBudget: w.cfg.RetryBudget, maxDeliver: w.consumer.MaxDeliver}
	if j.lane != nil {
		p.rateLimitBackoff = j.lane.rateLimitBackoff
	}
	return p
}
