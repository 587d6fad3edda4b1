package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// recentResults is how many requests' results (and confirmations) a
// ResultFollower keeps in memory.
const recentResults = 1 << 16

// ResultFollower reads the result subjects (and the confirmed subject) of the
// stream with one ordered consumer and hands each request's result to whoever
// waits for it, whichever replica stored it. Waiters are map entries keyed by
// the request's stream sequence, not subscriptions.
type ResultFollower struct {
	js        jetstream.JetStream
	stream    string
	subjects  []string
	confirmed string
	log       *slog.Logger
	capacity  int

	mu     sync.Mutex
	recent map[uint64]*recentEntry
	fifo   []*recentEntry
	// horizon is the highest stream sequence whose message may be missing
	// from recent (stored before the follower started, or evicted): a
	// request below it may have its result there, and is looked up in the
	// stream.
	horizon uint64
	waiters map[uint64]map[*resultWaiter]struct{}
	cc      jetstream.ConsumeContext
	cons    jetstream.Consumer // cc's consumer, deleted on Stop

	// backlog are the waiters that need what is stored up to the horizon;
	// one backfill at a time reads it for all of them (backfilling).
	backlog     map[*resultWaiter]struct{}
	backfilling bool
	bctx        context.Context
	bstop       context.CancelFunc
	bwg         sync.WaitGroup
}

// Backfill settings: a backfill's consumer is deleted when it ends, and
// the server removes one left behind (the follower's connection lost)
// after backfillInactive; a backfill that gets no message for backfillIdle
// gives up (what it waited for is gone from the stream).
const (
	backfillInactive = 30 * time.Second
	backfillIdle     = 5 * time.Second
)

// FollowerConfig is what a ResultFollower reads.
type FollowerConfig struct {
	Stream string
	// ResultSubjects are the ack and rejected subjects.
	ResultSubjects []string
	// ConfirmedSubject, when not empty, is followed too.
	ConfirmedSubject string
	Logger           *slog.Logger
	// Capacity bounds the requests kept in memory (0: 65536).
	Capacity int
}

type storedMsg struct {
	seq  uint64
	data []byte
	// confirmation: it came from the confirmed subject.
	confirmation bool
}

type recentEntry struct {
	requestSeq uint64
	msgs       []storedMsg
}

// NewResultFollower prepares a follower; Start starts it.
func NewResultFollower(js jetstream.JetStream, c FollowerConfig) *ResultFollower {
	subjects := slices.Clone(c.ResultSubjects)
	if c.ConfirmedSubject != "" {
		subjects = append(subjects, c.ConfirmedSubject)
	}
	if c.Capacity <= 0 {
		c.Capacity = recentResults
	}
	return &ResultFollower{
		js: js, stream: c.Stream, subjects: subjects, confirmed: c.ConfirmedSubject, log: c.Logger, capacity: c.Capacity,
		recent: map[uint64]*recentEntry{}, waiters: map[uint64]map[*resultWaiter]struct{}{},
		backlog: map[*resultWaiter]struct{}{},
	}
}

// Start follows everything stored after now; what was stored before is
// looked up in the stream when a waiter needs it.
func (f *ResultFollower) Start(ctx context.Context) error {
	s, err := f.js.Stream(ctx, f.stream)
	if err != nil {
		return fmt.Errorf("look up stream %s: %w", f.stream, err)
	}
	last := s.CachedInfo().State.LastSeq
	cons, err := f.js.OrderedConsumer(ctx, f.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: f.subjects,
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    last + 1,
	})
	if err != nil {
		return fmt.Errorf("follow the results of stream %s: %w", f.stream, err)
	}
	f.mu.Lock()
	f.horizon = last
	f.bctx, f.bstop = context.WithCancel(context.Background())
	f.mu.Unlock()
	cc, err := cons.Consume(f.handle, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		f.log.Debug("result follower", "error", err)
	}))
	if err != nil {
		return fmt.Errorf("follow the results of stream %s: %w", f.stream, err)
	}
	f.mu.Lock()
	f.cc, f.cons = cc, cons
	f.mu.Unlock()
	return nil
}

// Stop stops following and deletes the follower's consumer: a clean stop
// leaves nothing on the server (the server would otherwise keep it until
// its inactive threshold).
func (f *ResultFollower) Stop() {
	f.mu.Lock()
	cc, cons := f.cc, f.cons
	f.cc, f.cons = nil, nil
	if f.bstop != nil {
		f.bstop() // under the mutex: no backfill starts after this
	}
	f.mu.Unlock()
	f.bwg.Wait()
	if cc != nil {
		cc.Stop()
		<-cc.Closed()
		f.deleteConsumer(cons)
	}
}

// requestSeqOf reads the requestSeq of a result or a confirmation.
func requestSeqOf(data []byte) (uint64, bool) {
	var v struct {
		RequestSeq uint64 `json:"requestSeq"`
	}
	if json.Unmarshal(data, &v) != nil || v.RequestSeq == 0 {
		return 0, false
	}
	return v.RequestSeq, true
}

func (f *ResultFollower) handle(m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		return
	}
	reqSeq, ok := requestSeqOf(m.Data())
	if !ok {
		f.log.Warn("undecodable message on a result subject; ignored by the sync service", "subject", m.Subject(), "seq", meta.Sequence.Stream)
		return
	}
	sm := storedMsg{seq: meta.Sequence.Stream, data: m.Data(), confirmation: m.Subject() == f.confirmed}
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.recent[reqSeq]
	if e == nil {
		e = &recentEntry{requestSeq: reqSeq}
		f.recent[reqSeq] = e
		f.fifo = append(f.fifo, e)
		for len(f.recent) > f.capacity && len(f.fifo) > 0 {
			old := f.fifo[0]
			f.fifo[0] = nil
			f.fifo = f.fifo[1:]
			if f.recent[old.requestSeq] == old {
				delete(f.recent, old.requestSeq)
				for _, om := range old.msgs {
					f.horizon = max(f.horizon, om.seq)
				}
			}
		}
	}
	e.msgs = append(e.msgs, sm)
	for w := range f.waiters[reqSeq] {
		w.add(sm)
	}
}

// errNoResult: the request has no result yet (the wait ended first).
var errNoResult = errors.New("no result yet")

// Wait waits until the result of the request at stream sequence seq is
// stored (and, with confirmations, its confirmations) or ctx ends. It returns
// what it has so far, and ctx's error if the wait is incomplete.
func (f *ResultFollower) Wait(ctx context.Context, seq uint64, confirmations bool) (SyncAnswer, error) {
	w := &resultWaiter{requestSeq: seq, confirmations: confirmations, seen: map[uint64]bool{}, done: make(chan struct{})}
	f.mu.Lock()
	if e := f.recent[seq]; e != nil {
		for _, m := range e.msgs {
			w.add(m)
		}
	}
	horizon := f.horizon
	if f.waiters[seq] == nil {
		f.waiters[seq] = map[*resultWaiter]struct{}{}
	}
	f.waiters[seq][w] = struct{}{}
	if seq < horizon && !w.isDone() {
		// Part of what belongs to this request may have been stored before
		// the follower started, or evicted since: the backfill reads it.
		f.needBackfill(w)
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.waiters[seq], w)
		if len(f.waiters[seq]) == 0 {
			delete(f.waiters, seq)
		}
		delete(f.backlog, w)
		f.mu.Unlock()
	}()
	var err error
	select {
	case <-w.done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	f.mu.Lock()
	a := w.answer()
	complete := w.complete()
	w.closed = true
	f.mu.Unlock()
	switch {
	case complete:
		return a, nil
	case a.Result == nil:
		return a, fmt.Errorf("%w: %w", errNoResult, err)
	default:
		return a, err
	}
}

// needBackfill puts the waiter on the backlog and starts the backfill if
// none runs; the follower's mutex is held.
func (f *ResultFollower) needBackfill(w *resultWaiter) {
	if f.bctx == nil || f.bctx.Err() != nil {
		return
	}
	f.backlog[w] = struct{}{}
	if !f.backfilling {
		f.backfilling = true
		f.bwg.Add(1)
		go f.backfill()
	}
}

// backfill reads the stream for the waiters on the backlog, one pass at a
// time: each pass takes every waiter waiting then, and reads from just after
// the lowest of their sequences up to the horizon with one consumer. A
// waiter that comes during a pass is taken by the next.
func (f *ResultFollower) backfill() {
	defer f.bwg.Done()
	for {
		f.mu.Lock()
		var pass []*resultWaiter
		var from uint64
		for w := range f.backlog {
			if !w.closed {
				if len(pass) == 0 || w.requestSeq < from {
					from = w.requestSeq
				}
				pass = append(pass, w)
			}
		}
		clear(f.backlog)
		horizon := f.horizon
		if len(pass) == 0 || f.bctx.Err() != nil {
			f.backfilling = false
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
		if err := f.readBack(from, horizon, pass); err != nil && f.bctx.Err() == nil {
			f.log.Warn("sync service: reading older results failed", "fromRequestSeq", from, "toSeq", horizon, "error", err)
		}
	}
}

// readBack reads the followed subjects from just after from up to horizon
// and hands each message to the waiters of its request, until none of the
// pass's waiters still waits. Its consumer is deleted when it ends.
func (f *ResultFollower) readBack(from, horizon uint64, pass []*resultWaiter) error {
	ctx := f.bctx
	cons, err := f.js.OrderedConsumer(ctx, f.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: f.subjects, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from + 1,
		InactiveThreshold: backfillInactive,
	})
	if err != nil {
		return err
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	stopOnEnd := context.AfterFunc(ctx, it.Stop)
	defer func() {
		stopOnEnd()
		it.Stop()
		f.deleteConsumer(cons)
	}()
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		return nil
	}
	for f.anyOpen(pass) {
		m, err := it.Next(jetstream.NextMaxWait(backfillIdle))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if more := f.handBack(m, horizon); !more {
			return nil
		}
	}
	return nil
}

// anyOpen reports whether one of the pass's waiters still waits.
func (f *ResultFollower) anyOpen(pass []*resultWaiter) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(pass, func(w *resultWaiter) bool { return !w.closed })
}

// handBack gives one message read back to the waiters of its request; more
// is false past horizon or at the stream's end.
func (f *ResultFollower) handBack(m jetstream.Msg, horizon uint64) (more bool) {
	meta, err := m.Metadata()
	if err != nil {
		return true
	}
	if meta.Sequence.Stream > horizon {
		return false
	}
	if rs, ok := requestSeqOf(m.Data()); ok {
		sm := storedMsg{seq: meta.Sequence.Stream, data: m.Data(), confirmation: m.Subject() == f.confirmed}
		f.mu.Lock()
		for w := range f.waiters[rs] {
			w.add(sm)
		}
		f.mu.Unlock()
	}
	return meta.NumPending != 0
}

// deleteConsumer deletes one of the follower's ordered consumers (the
// follower's own or a backfill's), also when the follower has stopped.
func (f *ResultFollower) deleteConsumer(cons jetstream.Consumer) {
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.js.DeleteConsumer(dctx, f.stream, info.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		f.log.Debug("sync service: delete a result consumer", "consumer", info.Name, "error", err)
	}
}

// SyncAnswer is what a waiter collected: the stored result and the
// confirmations.
type SyncAnswer struct {
	// Result is the result message as stored; nil when none came.
	Result []byte
	// Parsed is Result decoded.
	Parsed        messages.Result
	Confirmations []messages.Confirmation
}

// Marshal is the reply body: the stored result itself, or with
// confirmations asked for, the result with its confirmations.
func (a SyncAnswer) Marshal(withConfirmations bool) ([]byte, error) {
	if !withConfirmations {
		return a.Result, nil
	}
	return json.Marshal(messages.Answer{Result: a.Parsed, Confirmations: a.Confirmations})
}

// resultWaiter collects one request's messages; its fields are guarded by
// the follower's mutex.
type resultWaiter struct {
	requestSeq    uint64
	confirmations bool
	seen          map[uint64]bool

	result []byte
	parsed messages.Result
	confs  []messages.Confirmation
	done   chan struct{}
	closed bool
}

func (w *resultWaiter) add(m storedMsg) {
	if w.seen[m.seq] || w.closed {
		return
	}
	w.seen[m.seq] = true
	if m.confirmation {
		if c, err := messages.DecodeConfirmation(m.data); err == nil {
			w.confs = append(w.confs, c)
		}
	} else if r, err := messages.DecodeResult(m.data); err == nil && w.result == nil {
		w.result, w.parsed = m.data, r
	}
	if w.complete() {
		w.closed = true
		close(w.done)
	}
}

func (w *resultWaiter) complete() bool {
	if w.result == nil {
		return false
	}
	if !w.confirmations || !w.parsed.NeedsConfirmation() {
		return true
	}
	return len(w.confs) >= len(w.parsed.ConfirmTargets())
}

func (w *resultWaiter) isDone() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// answer copies what the waiter has; the follower's mutex is held.
func (w *resultWaiter) answer() SyncAnswer {
	return SyncAnswer{Result: w.result, Parsed: w.parsed, Confirmations: slices.Clone(w.confs)}
}
