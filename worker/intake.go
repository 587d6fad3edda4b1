package worker

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// accept takes one delivered request into the worker; pulledAt is when the
// pull that brought it was asked for.
func (w *Worker) accept(ctx context.Context, msg jetstream.Msg, pulledAt time.Time) {
	meta, err := msg.Metadata()
	if err != nil {
		w.log.Error("message without JetStream metadata; terminated", "subject", msg.Subject(), "error", err)
		_ = msg.Term()
		return
	}
	w.stats.Received.Add(1)
	w.metrics.received.Inc()
	if meta.NumDelivered > 1 {
		w.stats.Redelivered.Add(1)
		w.metrics.redeliveries.Inc()
	}
	seq := meta.Sequence.Stream
	if _, done := w.answered.get(seq); done {
		// This process published the result already; only the ack was lost.
		w.log.Debug("redelivered request already answered; acked again", "seq", seq)
		_ = msg.DoubleAck(w.sendCtxOr(ctx))
		return
	}
	j := &job{heldMsg: newHeldMsg(msg, meta, pulledAt)}
	if cur, added := w.held.add(&j.heldMsg); !added {
		// A redelivery of a message this process still holds (its
		// heartbeats were lost): answer it once, via the newest delivery,
		// whose count the retry budget's end and the result go by.
		cur.redelivered(msg, meta.NumDelivered, pulledAt)
		return
	}
	w.jobs.Add(1)
	j.ambiguous = meta.NumDelivered > 1
	if prev, ok := w.released.get(seq); ok && prev == meta.NumDelivered-1 {
		// This process itself released the previous delivery before
		// sending anything: nothing can have reached Bybit.
		j.ambiguous = false
	}
	if err := w.read(j, msg); err != nil {
		w.refuse(j, msg.Data(), err)
		return
	}
	if w.stopped.Load() || ctx.Err() != nil {
		// Decoded first: a release on the last delivery is answered
		// with the request's fields.
		w.giveBack(j, 0, "shutdown")
		return
	}
	acct, err := w.accountOf(j.req.Account)
	if err != nil {
		w.refuse(j, msg.Data(), err)
		return
	}
	if j.all != nil && j.all.Flatten() {
		go w.flatten(j, acct) // lanes per category, as it goes
		return
	}
	l := w.lane(acct, j.req.Category)
	j.lane = l
	if j.all != nil {
		go w.cancelAll(j, acct)
		return
	}
	if !l.push(j, false) {
		w.giveBack(j, 0, "shutdown")
	}
}

// read decodes and validates the request of j; an error says why it is
// invalid.
func (w *Worker) read(j *job, msg jetstream.Msg) error {
	var msgID string
	if h := msg.Headers(); h != nil {
		msgID = h.Get(nats.MsgIdHdr)
	}
	req, all, err := w.decode(msg)
	if err == nil {
		err = reservedMsgID(msgID)
	}
	if err != nil {
		j.requestID = messages.RequestID(messages.LenientEcho(msg.Data()).RequestID, msgID, w.cfg.Stream, j.seq)
		return err
	}
	j.req, j.all = req, all
	j.requestID = messages.RequestID(req.RequestID, msgID, w.cfg.Stream, j.seq)
	return nil
}

// accountOf is the account a request names ("": the default one); an error
// says why there is none.
func (w *Worker) accountOf(name string) (*account, error) {
	if acct, ok := w.accounts[cmp.Or(name, DefaultAccount)]; ok {
		return acct, nil
	}
	if name == "" {
		return nil, fmt.Errorf("%w: no account given and no default account is configured", messages.ErrInvalid)
	}
	return nil, fmt.Errorf("%w: unknown account %q", messages.ErrInvalid, name)
}

// reservedMsgID refuses a request whose Nats-Msg-Id has one of the worker's
// own prefixes: JetStream deduplicates ids across the stream, so the request
// would take the place of one of the worker's messages.
func reservedMsgID(id string) error {
	if p, ok := messages.ReservedMsgID(id); ok {
		return fmt.Errorf("%w: Nats-Msg-Id %q starts with %q, which is reserved for the worker's own messages (results, progress records, confirmations); give the request another id", messages.ErrInvalid, id, p)
	}
	return nil
}

// decode reads a cancel, or a cancel-all (all), by the subject it came on.
func (w *Worker) decode(msg jetstream.Msg) (req messages.Cancel, all *messages.CancelAll, err error) {
	rt := w.routes[msg.Subject()]
	if rt.all {
		var ca messages.CancelAll
		if ca, err = messages.DecodeCancelAll(msg.Data()); err == nil {
			all = &ca
			req = messages.Cancel{Category: ca.Category, Account: ca.Account, RequestID: ca.RequestID}
		}
	} else {
		req, err = messages.DecodeCancel(msg.Data())
	}
	if err != nil {
		return messages.Cancel{}, nil, err
	}
	// A request on an account's own subject is for that account.
	if req.Account, err = forAccount(rt, req.Account); err != nil {
		return messages.Cancel{}, nil, err
	}
	if all != nil {
		all.Account = req.Account
	}
	return req, all, nil
}

// refuse answers a request that cannot be sent: invalid, with why.
func (w *Worker) refuse(j *job, payload []byte, why error) {
	j.invalid = messages.NewInvalidResult(payload, why, j.requestID, j.seq, j.stored)
	go w.apply(j, nil, w.decide(j, event{kind: evInvalid, err: why}))
}
