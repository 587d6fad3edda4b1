package worker

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
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
	// pending: this run's records published and not yet acknowledged.
	pending []jetstream.PubAckFuture
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

// foldOthers takes in what the stream holds now from runs other than this
// one: a run that overlaps this one (the request was redelivered while this
// run went on) adds what it cancelled, and while it has calls and no release
// record the list may miss what it still cancels.
func (p *cancelAllProgress) foldOthers(recs []messages.CancelAllProgress) {
	called, released := map[string]bool{}, map[string]bool{}
	for _, r := range recs {
		if r.Run == p.run && r.Run != "" {
			continue
		}
		p.add(r.Orders)
		p.lost = p.lost || r.Lost
		if r.Released {
			released[r.Run] = true
		} else {
			called[r.Run] = true
		}
	}
	for run := range called {
		if !released[run] {
			p.unknownEarlier = true
		}
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
		w.log.Warn("a cancel-all's progress could not be read for its last delivery's result; its list is reported possibly incomplete", j.attrs()...)
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
	w.flushProgress(j)
	if j.prog.unrecorded {
		return
	}
	w.storeProgress(j, messages.CancelAllProgress{Released: true})
	w.flushProgress(j)
}

// storeProgress publishes a record without waiting for its PubAck: the next
// call goes out meanwhile. flushProgress waits for the acks.
func (w *Worker) storeProgress(j *job, rec messages.CancelAllProgress) {
	if !w.keepProgress || w.progressRefused.Load() {
		return
	}
	j.mu.Lock()
	rec.Delivery = j.deliveries
	j.mu.Unlock()
	rec.RequestSeq, rec.Run = j.seq, j.prog.run
	data, err := json.Marshal(rec)
	var f jetstream.PubAckFuture
	if err == nil {
		f, err = w.js.PublishMsgAsync(&nats.Msg{Subject: w.cfg.progressSubject(j.seq), Data: data},
			jetstream.WithMsgID(messages.CancelAllProgressMsgID(rec)), jetstream.WithExpectStream(w.cfg.Stream))
	}
	if err != nil {
		w.progressNotStored(j, err)
		return
	}
	j.prog.pending = append(j.prog.pending, f)
}

// flushProgress waits for the PubAcks of j's records published so far, all
// within progressTimeout: bookkeeping must not hold up a kill switch long.
func (w *Worker) flushProgress(j *job) {
	if len(j.prog.pending) == 0 {
		return
	}
	if err := w.progressRefusal(); err != nil {
		// The server said so already: no ack is coming.
		j.prog.pending = nil
		w.progressNotStored(j, err)
		return
	}
	timeout := time.NewTimer(progressTimeout)
	defer timeout.Stop()
	var err error
	for _, f := range j.prog.pending {
		select {
		case <-f.Ok():
			continue
		case err = <-f.Err():
		case <-timeout.C:
			err = errors.New("no PubAck within " + progressTimeout.String())
		case <-w.sendCtxOr(context.Background()).Done():
			err = context.Cause(w.sendCtx)
		}
		break
	}
	j.prog.pending = nil
	if err != nil {
		w.progressNotStored(j, err)
	}
}

// progressNotStored books a record not stored. The server's refusal for
// want of permission turns the records off, with one warning: each would
// wait progressTimeout for a PubAck that never comes.
func (w *Worker) progressNotStored(j *job, err error) {
	j.prog.unrecorded = true
	if last := w.progressRefusal(); last != nil {
		if w.progressRefused.CompareAndSwap(false, true) {
			w.log.Warn("the NATS server refuses this worker's cancel-all progress records (permissions): they are not written any more; a redelivered cancel-all's result will say its list may be incomplete. Allow publishing "+w.cfg.progressSubjects()+" to keep them",
				j.attrs("error", last)...)
		}
		return
	}
	w.log.Warn("cancel-all progress not stored: should this request be redelivered, its result will say its list may be incomplete", j.attrs("error", err)...)
}

// progressRefusal is the connection's permissions violation for a progress
// subject, if the server reported one (nats.go keeps the last error).
func (w *Worker) progressRefusal() error {
	nc := w.js.Conn()
	if nc == nil {
		return nil
	}
	if last := nc.LastError(); errors.Is(last, nats.ErrPermissionViolation) && strings.Contains(last.Error(), w.cfg.CancelAllProgressSubject) {
		return last
	}
	return nil
}

// settleProgress, before a cancel-all's result: its records acknowledged,
// and what other runs recorded meanwhile folded in. Records that cannot be
// read within progressTimeout make the list say it may be incomplete.
func (w *Worker) settleProgress(j *job) {
	w.flushProgress(j)
	if !w.keepProgress {
		return
	}
	ctx, cancel := context.WithTimeout(w.sendCtxOr(context.Background()), progressTimeout)
	defer cancel()
	recs, err := w.readProgress(ctx, j.seq)
	if err != nil {
		w.log.Warn("a cancel-all's progress could not be read again before its result; its list is reported possibly incomplete", j.attrs("error", err)...)
		j.prog.unknownEarlier = true
		return
	}
	j.prog.foldOthers(recs)
}
