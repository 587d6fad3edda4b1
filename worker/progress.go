package worker

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// progressTimeout bounds storing one progress record: bookkeeping must not
// hold up a kill switch for long (a stream that refuses the subject, a
// missing permission). A record not stored only makes a later delivery say
// that its list may be incomplete.
const progressTimeout = 2 * time.Second

// cancelAllProgress is what a cancel-all has cancelled so far — by this run
// and by every earlier delivery whose records it read — and whether that list
// may miss orders. It belongs to the job's one goroutine.
type cancelAllProgress struct {
	run    string
	orders []messages.OrderRef
	seen   map[string]bool
	// lost: a call, of this run or an earlier one, may have cancelled
	// orders whose list never arrived.
	lost bool
	// unknownEarlier: an earlier delivery may have made calls that left no
	// readable record (a crash, no progress subject on the stream).
	unknownEarlier bool
	// unrecorded: one of this run's records could not be stored, so a
	// release must not claim that every call has its record.
	unrecorded bool
}

func (p *cancelAllProgress) add(orders []messages.OrderRef) {
	for _, o := range orders {
		key := o.OrderID
		if key == "" {
			key = "link:" + o.OrderLinkID
		}
		if p.seen[key] {
			continue
		}
		p.seen[key] = true
		p.orders = append(p.orders, o)
	}
}

func (p *cancelAllProgress) complete() bool { return !p.lost && !p.unknownEarlier }

// fold takes in the records of earlier runs. The list is complete only if
// no call's answer was lost, every run that made calls said when it gave
// the request back that all of them are recorded, and — when an earlier
// delivery may have sent anything — the delivery just before this one is
// such a run (one that crashed in its first call leaves no record at all).
func (p *cancelAllProgress) fold(recs []messages.CancelAllProgress, delivery uint64, earlierMaySend bool) {
	called, released := map[string]bool{}, map[string]bool{}
	var lastReleased uint64
	for _, r := range recs {
		p.add(r.Orders)
		p.lost = p.lost || r.Lost
		if r.Released {
			released[r.Run] = true
			lastReleased = max(lastReleased, r.Delivery)
		} else {
			called[r.Run] = true
		}
	}
	for run := range called {
		if !released[run] {
			p.unknownEarlier = true
		}
	}
	if earlierMaySend && lastReleased+1 < delivery {
		p.unknownEarlier = true
	}
}

// startProgress begins a run of a cancel-all: on a redelivery it reads what
// earlier deliveries recorded. It fails only when ctx ends first.
func (w *Worker) startProgress(ctx context.Context, j *job) error {
	// Before any call of this run, ambiguous means that an earlier
	// delivery may have sent calls.
	j.mu.Lock()
	delivery, earlierMaySend := j.deliveries, j.ambiguous
	j.mu.Unlock()
	p := &cancelAllProgress{run: rand.Text(), seen: map[string]bool{}}
	switch {
	case delivery > 1 && w.keepProgress:
		recs, err := w.readProgress(ctx, j.seq)
		if err != nil {
			return err
		}
		p.fold(recs, delivery, earlierMaySend)
	case earlierMaySend:
		p.unknownEarlier = true
	}
	j.prog = p
	return nil
}

// loadProgressForRelease reads a cancel-all's earlier records for the
// result of a last delivery given back before its run started (a worker
// stopping), bounded by progressTimeout: records it cannot read make the
// list say it may be incomplete.
func (w *Worker) loadProgressForRelease(j *job) {
	ctx, cancel := context.WithTimeout(w.sendCtxOr(context.Background()), progressTimeout)
	defer cancel()
	if w.startProgress(ctx, j) != nil {
		w.log.Warn("a cancel-all's progress could not be read for its last delivery's result; its list is reported possibly incomplete", w.jobAttrs(j)...)
		j.prog = &cancelAllProgress{seen: map[string]bool{}, unknownEarlier: true}
	}
}

// readProgress reads every progress record of the request at seq, retrying
// until ctx ends.
func (w *Worker) readProgress(ctx context.Context, seq uint64) ([]messages.CancelAllProgress, error) {
	retry := newRetryBackoff()
	for {
		recs, err := w.tryReadProgress(ctx, seq)
		if err == nil {
			return recs, nil
		}
		w.log.Warn("reading a cancel-all's progress failed; retrying", "seq", seq, "error", err)
		if sleepCtx(ctx, retry.NextBackOff()) != nil {
			return nil, ctx.Err()
		}
	}
}

func (w *Worker) tryReadProgress(ctx context.Context, seq uint64) ([]messages.CancelAllProgress, error) {
	s, err := w.js.Stream(ctx, w.cfg.Stream)
	if err != nil {
		return nil, err
	}
	subject := w.cfg.progressSubject(seq)
	var recs []messages.CancelAllProgress
	// Records follow their request in the stream: read them one by one
	// with the server's next-by-subject lookup.
	for next := seq + 1; ; {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return recs, nil
		}
		if err != nil {
			return nil, err
		}
		rec, err := messages.DecodeCancelAllProgress(m.Data)
		if err != nil || rec.RequestSeq != seq {
			// Not ours to read: what it said is unknown.
			w.log.Warn("unreadable cancel-all progress record; the list is reported possibly incomplete", "seq", seq, "recordSeq", m.Sequence)
			rec = messages.CancelAllProgress{RequestSeq: seq, Lost: true}
		}
		recs = append(recs, rec)
		next = m.Sequence + 1
	}
}

// recordCall books the orders one call cancelled and stores them.
func (w *Worker) recordCall(j *job, orders []messages.OrderRef) {
	j.prog.add(orders)
	w.storeProgress(j, messages.CancelAllProgress{Call: j.attempts, Orders: orders})
}

// recordLost books a call that may have cancelled orders without saying
// which.
func (w *Worker) recordLost(j *job) {
	j.prog.lost = true
	w.storeProgress(j, messages.CancelAllProgress{Call: j.attempts, Lost: true})
}

// recordReleased says that this run gives the request back with every call
// recorded; the next delivery then knows its list is whole.
func (w *Worker) recordReleased(j *job) {
	if j.prog.unrecorded {
		return
	}
	w.storeProgress(j, messages.CancelAllProgress{Released: true})
}

func (w *Worker) storeProgress(j *job, rec messages.CancelAllProgress) {
	if !w.keepProgress {
		return
	}
	j.mu.Lock()
	rec.Delivery = j.deliveries
	j.mu.Unlock()
	rec.RequestSeq, rec.Run = j.seq, j.prog.run
	data, err := json.Marshal(rec)
	if err == nil {
		ctx, cancel := context.WithTimeout(w.sendCtx, progressTimeout)
		err = w.publish(ctx, w.cfg.progressSubject(j.seq), data, messages.CancelAllProgressMsgID(rec))
		cancel()
	}
	if err != nil {
		j.prog.unrecorded = true
		w.log.Warn("cancel-all progress not stored: should this request be redelivered, its result will say its list may be incomplete", w.jobAttrs(j, "error", err)...)
	}
}
