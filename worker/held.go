package worker

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// job is one held message: pulled, not yet answered. Its processing state is
// touched by one goroutine at a time (the lane, then the sender, then the
// finisher); the fields under mu are shared with the heartbeat and with the
// pull, which hands a redelivery of a held message to the job holding it.
type job struct {
	seq         uint64
	requestTime time.Time
	req         messages.Cancel
	// all is set instead of req for a cancel-all request; prog is its
	// progress once it runs.
	all       *messages.CancelAll
	prog      *cancelAllProgress
	requestID string
	lane      *lane

	mu   sync.Mutex
	msg  jetstream.Msg
	done bool
	// deliveries is the NumDelivered of msg, the newest delivery.
	deliveries uint64
	// confirmedAt is the latest moment from which the server is known to
	// count this delivery's AckWait: when it was pulled, then the send time
	// of each heartbeat the consumer leader answered.
	confirmedAt time.Time
	// stale: heartbeats went unconfirmed long enough that the server may
	// have handed this delivery to another consumer. A newer delivery to
	// this process makes it current again.
	stale bool
	// handedOut: while this process held the message, the server may have
	// handed it to another consumer (stale once, or a redelivery skipped a
	// delivery count). What that consumer sent may have been applied.
	handedOut bool

	// queuedAt is when the job last entered its lane: the time until it is
	// dispatched is time spent waiting for rate-limit budget.
	queuedAt       time.Time
	attempts       int
	ambiguous      bool
	rateLimitWait  time.Duration
	transientSince time.Time
	skewRetries    int
	lastErr        error
	sentAt         time.Time
	backoff        *backoff.ExponentialBackOff
	// noBatch: a batch carrying it was refused as a whole; it goes alone.
	noBatch bool
}

// delivery returns the newest delivery of the message and its count.
func (j *job) delivery() (jetstream.Msg, uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.msg, j.deliveries
}

// redelivered makes a newer delivery of the held message the one this job
// answers: its count is what the retry budget's end and the result go by,
// and this process holds the current delivery again. A count that skipped
// one means another consumer had the message in between.
func (j *job) redelivered(msg jetstream.Msg, deliveries uint64, pulledAt time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if deliveries <= j.deliveries {
		return
	}
	if deliveries > j.deliveries+1 {
		j.handedOut = true
	}
	j.msg, j.deliveries = msg, deliveries
	j.stale, j.confirmedAt = false, pulledAt
}

// staleRule says when a held message counts as possibly handed to another
// consumer: no heartbeat of it answered for after, with heartbeats seen to
// fail (the connection down, or no consumer leader to answer) since the last
// answered one; or for silent, without any sign (a connection that stalls
// without closing). Zero: never (heartbeats are not answered at all).
type staleRule struct {
	after, silent time.Duration
	troubleAt     time.Time
}

// checkStale marks the job stale by rule, and reports whether it is.
func (j *job) checkStale(now time.Time, rule staleRule) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.checkStaleLocked(now, rule)
}

func (j *job) checkStaleLocked(now time.Time, rule staleRule) bool {
	if j.stale || rule.after <= 0 || j.confirmedAt.IsZero() {
		return j.stale
	}
	age := now.Sub(j.confirmedAt)
	if age >= rule.silent || (age >= rule.after && rule.troubleAt.After(j.confirmedAt)) {
		j.stale, j.handedOut = true, true
	}
	return j.stale
}

// heldSet is every message this process holds, keyed by stream sequence. One
// ticker heartbeats all of them, wherever they wait.
//
// Only an answer shows a heartbeat arrived: a plain InProgress is lost
// without a trace while the connection is down or the consumer has no
// leader, and the server then hands the message to whichever consumer pulls
// next. So each round of heartbeats is bracketed by two sent as requests,
// which the consumer leader answers once it has heard them: the connection
// delivers in order, so when both are answered the round arrived. A message
// that no answered round (or, just pulled, no answered heartbeat of its own)
// covered for long enough is stale (see staleRule and Worker.letGo).
type heldSet struct {
	mu      sync.Mutex
	jobs    map[uint64]*job
	changed chan struct{}

	// Set while heartbeats run: nc carries them, inbox collects their
	// answers, base dates them (an answer names its heartbeat's send time
	// as an offset from base), rule decides staleness and reconnects is the
	// connection's count at the last round. rule.after is AckWait less half
	// a heartbeat interval: the server may hand a message out AckWait after
	// the last heartbeat it heard (a new consumer leader, one interval
	// earlier if the newest was not replicated yet, but only after an
	// election of seconds), and the rest covers the time between the last
	// look at a message and its cancel leaving. rule.silent is twice AckWait.
	nc         *nats.Conn
	inbox      string
	base       time.Time
	rule       staleRule
	reconnects uint64
	rounds     map[uint64]*round
	nextRound  uint64
}

// round is one round of heartbeats: the jobs it covered (at their delivery
// then) and which of its two bracketing requests were answered.
type round struct {
	at          time.Time
	jobs        []*job
	deliveries  []uint64
	first, last bool
}

func newHeldSet() *heldSet {
	return &heldSet{jobs: map[uint64]*job{}, changed: make(chan struct{}), rounds: map[uint64]*round{}}
}

// add registers j, or returns the job already held for the same sequence (a
// redelivery of a message this process still works on).
func (h *heldSet) add(j *job) (*job, bool) {
	h.mu.Lock()
	if prev, ok := h.jobs[j.seq]; ok {
		h.mu.Unlock()
		return prev, false
	}
	h.jobs[j.seq] = j
	nc, inbox, base := h.nc, h.inbox, h.base
	h.mu.Unlock()
	// The first heartbeat goes at once, answered on its own: the next
	// round may be a third of AckWait away, and the server's AckWait began
	// when it sent the message.
	if nc != nil {
		j.mu.Lock()
		msg, deliveries := j.msg, j.deliveries
		j.mu.Unlock()
		reply := inbox + ".j." + strconv.FormatUint(j.seq, 10) + "." + strconv.FormatUint(deliveries, 10) + "." +
			strconv.FormatInt(int64(time.Since(base)), 10)
		_ = nc.PublishMsg(&nats.Msg{Subject: msg.Reply(), Reply: reply, Data: ackProgress})
	}
	return j, true
}

var ackProgress = []byte("+WPI")

func (h *heldSet) remove(j *job) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.jobs[j.seq] == j {
		delete(h.jobs, j.seq)
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

// len returns how many messages are held, and a channel closed at the next
// removal.
func (h *heldSet) len() (int, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.jobs), h.changed
}

// heartbeatLoop heartbeats every held message at a third of ackWait until
// ctx ends; nc carries the heartbeats and their answers.
func (h *heldSet) heartbeatLoop(ctx context.Context, nc *nats.Conn, ackWait time.Duration) {
	interval := max(ackWait/3, 10*time.Millisecond)
	inbox := nats.NewInbox()
	sub, err := nc.Subscribe(inbox+".>", h.confirmed)
	if err == nil {
		defer func() { _ = sub.Unsubscribe() }()
		h.mu.Lock()
		h.nc, h.inbox, h.base = nc, inbox, time.Now()
		h.rule = staleRule{after: ackWait - interval/2, silent: 2 * ackWait}
		h.reconnects = nc.Stats().Reconnects
		h.mu.Unlock()
		defer func() {
			h.mu.Lock()
			h.nc, h.inbox, h.rule = nil, "", staleRule{}
			h.mu.Unlock()
		}()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.heartbeat(2 * ackWait)
		}
	}
}

func (h *heldSet) snapshot() []*job {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*job, 0, len(h.jobs))
	for _, j := range h.jobs {
		out = append(out, j)
	}
	return out
}

// heartbeat sends one round: InProgress for every held message, the first
// and the last sent as requests. Rounds older than keep are forgotten.
func (h *heldSet) heartbeat(keep time.Duration) {
	now := time.Now()
	jobs := h.snapshot()
	h.mu.Lock()
	nc, inbox := h.nc, h.inbox
	if nc != nil {
		// Heartbeats sent while the connection is down, or across a
		// reconnect since the last round, may not have arrived.
		if rc := nc.Stats().Reconnects; nc.Status() != nats.CONNECTED || rc != h.reconnects {
			h.rule.troubleAt, h.reconnects = now, rc
		}
	}
	rule := h.rule
	h.nextRound++
	n := h.nextRound
	r := &round{at: now, jobs: make([]*job, 0, len(jobs)), deliveries: make([]uint64, 0, len(jobs))}
	if nc != nil {
		h.rounds[n] = r
		for k, old := range h.rounds {
			if now.Sub(old.at) > keep {
				delete(h.rounds, k)
			}
		}
	}
	h.mu.Unlock()
	var msgs []jetstream.Msg
	for _, j := range jobs {
		j.mu.Lock()
		msg, deliveries, done := j.msg, j.deliveries, j.done
		if !done {
			j.checkStaleLocked(now, rule)
		}
		j.mu.Unlock()
		if !done {
			msgs = append(msgs, msg)
			r.jobs, r.deliveries = append(r.jobs, j), append(r.deliveries, deliveries)
		}
	}
	if len(msgs) == 0 {
		return
	}
	if nc == nil { // no answers to be had: heartbeat blind
		for _, msg := range msgs {
			_ = msg.InProgress() // a lost heartbeat is retried at the next tick
		}
		return
	}
	prefix := inbox + ".r." + strconv.FormatUint(n, 10)
	_ = nc.PublishMsg(&nats.Msg{Subject: msgs[0].Reply(), Reply: prefix + ".first", Data: ackProgress})
	for _, msg := range msgs {
		_ = msg.InProgress()
	}
	_ = nc.PublishMsg(&nats.Msg{Subject: msgs[len(msgs)-1].Reply(), Reply: prefix + ".last", Data: ackProgress})
}

// confirmed takes the consumer leader's answer to a heartbeat sent as a
// request. A status message (503: no consumer leader heard it) confirms
// nothing.
func (h *heldSet) confirmed(m *nats.Msg) {
	if m.Header.Get("Status") != "" {
		h.mu.Lock()
		h.rule.troubleAt = time.Now()
		h.mu.Unlock()
		return
	}
	parts := strings.Split(strings.TrimPrefix(m.Subject, h.inboxName()+"."), ".")
	now := time.Now()
	switch {
	case len(parts) == 4 && parts[0] == "j":
		seq, err1 := strconv.ParseUint(parts[1], 10, 64)
		deliveries, err2 := strconv.ParseUint(parts[2], 10, 64)
		offset, err3 := strconv.ParseInt(parts[3], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return
		}
		h.mu.Lock()
		j, sent, rule := h.jobs[seq], h.base.Add(time.Duration(offset)), h.rule
		h.mu.Unlock()
		if j != nil {
			j.confirm(deliveries, sent, now, rule)
		}
	case len(parts) == 3 && parts[0] == "r":
		n, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil {
			return
		}
		h.mu.Lock()
		r, rule := h.rounds[n], h.rule
		done := false
		if r != nil {
			if parts[2] == "first" {
				r.first = true
			} else {
				r.last = true
			}
			done = r.first && r.last
			if done {
				delete(h.rounds, n)
			}
		}
		h.mu.Unlock()
		if done {
			for i, j := range r.jobs {
				j.confirm(r.deliveries[i], r.at, now, rule)
			}
		}
	}
}

func (h *heldSet) inboxName() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.inbox
}

// confirm records that the server heard a heartbeat of the given delivery
// sent at sent; the answer came at now.
func (j *job) confirm(deliveries uint64, sent, now time.Time, rule staleRule) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.deliveries != deliveries || j.done {
		return
	}
	// A gap that has already happened counts even if this answer ends it.
	if !j.checkStaleLocked(now, rule) && sent.After(j.confirmedAt) {
		j.confirmedAt = sent
	}
}

// stale reports whether a held message's heartbeats went unconfirmed for
// long enough that the server may have handed it to another consumer.
func (h *heldSet) stale(j *job) bool {
	h.mu.Lock()
	rule := h.rule
	h.mu.Unlock()
	return j.checkStale(time.Now(), rule)
}

// seqMemory remembers up to n stream sequences (oldest forgotten first).
type seqMemory struct {
	mu   sync.Mutex
	vals map[uint64]uint64
	ring []uint64
	next int
}

func newSeqMemory(n int) *seqMemory {
	return &seqMemory{vals: make(map[uint64]uint64, n), ring: make([]uint64, n)}
}

func (m *seqMemory) put(seq, val uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.vals[seq]; !ok {
		if old := m.ring[m.next]; old != 0 {
			delete(m.vals, old)
		}
		m.ring[m.next] = seq
		m.next = (m.next + 1) % len(m.ring)
	}
	m.vals[seq] = val
}

func (m *seqMemory) get(seq uint64) (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vals[seq]
	return v, ok
}
