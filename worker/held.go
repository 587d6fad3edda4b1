package worker

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// maxFetch bounds one pull request.
const maxFetch = 256

// puller pulls one consumer's messages while fewer than max are held: the
// requests' consumer and the confirmations' share it.
type puller struct {
	// name is "" for the requests' consumer, "confirm " for the other, in
	// logs.
	name string
	cons jetstream.Consumer
	held *heldSet
	max  int
	log  *slog.Logger
	// ban, when set, holds the pull during an IP ban's pause.
	ban *banGate
	// accept takes a message; pulledAt is when the pull that brought it
	// was asked for: the server starts a delivery's AckWait when it hands
	// the message to the pull, never before.
	accept func(ctx context.Context, msg jetstream.Msg, pulledAt time.Time)

	// The fleet (fleet.go): pin is the consumer's pin (one that is off
	// does nothing); now is the clock it goes by. keepPin, when set and
	// true, keeps pulling where the loop would otherwise wait (an IP ban;
	// a full held set, where renew renews the pin every renewal); pulled is
	// told how each pull ended; standBy that another replica holds the pin.
	pin     *pin
	now     func() time.Time
	keepPin func() bool
	renew   func(ctx context.Context)
	renewal func() <-chan time.Time
	pulled  func(start time.Time, err error)
	standBy func()
	// hold, when set, waits until the replica may pull this consumer (the
	// confirmations follow the cancel consumer's pin).
	hold func(ctx context.Context) error
}

func (p puller) keepingPin() bool { return p.keepPin != nil && p.keepPin() }

// run pulls until ctx ends.
func (p puller) run(ctx context.Context) {
	retry := newRetryBackoff()
	for ctx.Err() == nil {
		if !p.mayPull(ctx) {
			return
		}
		room := p.freeRoom(ctx)
		if room <= 0 {
			continue
		}
		err := p.pull(ctx, room)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, jetstream.ErrPinIDMismatch):
			if p.standBy != nil {
				p.standBy()
			}
		case err != nil:
			p.log.Warn(p.name+"pull failed", "error", err)
			_ = sleepCtx(ctx, retry.NextBackOff())
		default:
			retry.Reset()
		}
	}
}

// mayPull waits out an IP ban's pause (unless the pull keeps the pin) and
// the hold; false: ctx ended.
func (p puller) mayPull(ctx context.Context) bool {
	if p.ban != nil && !p.keepingPin() && p.ban.waitOpen(ctx) != nil {
		return false
	}
	return p.hold == nil || p.hold(ctx) == nil
}

// freeRoom is how many messages the next pull may take. With none it
// waits, renewing the pin meanwhile if it keeps it, until the held set
// changes, the renewal is due or ctx ends, and returns 0.
func (p puller) freeRoom(ctx context.Context) int {
	n, changed := p.held.len()
	if room := p.max - n; room > 0 {
		return room
	}
	var renewal <-chan time.Time
	if p.keepingPin() {
		p.renew(ctx)
		renewal = p.renewal()
	}
	select {
	case <-ctx.Done():
	case <-changed:
	case <-renewal:
	}
	return 0
}

// pull makes one pull of up to room messages, which the server ends after
// the pin's pullWait (see fetchOpts), and accepts what it brings. A stop
// (ctx) does not cut it short: what the server delivered to it reaches
// accept, which at a stop gives it back or leaves it for redelivery, instead
// of being dropped unread until AckWait. What arrives after the stop is
// accepted only once the pull has ended: a message given back while the
// pull is still open is handed straight back into it by the server, again
// and again, each time a delivery, until its last one.
func (p puller) pull(ctx context.Context, room int) error {
	start := p.now()
	batch, err := p.cons.Fetch(min(room, maxFetch), p.pin.fetchOpts()...)
	if err != nil {
		return err
	}
	var late []jetstream.Msg
	for msg := range batch.Messages() {
		// The pin first: a lane sends only for the active replica.
		p.pin.pulled(start, pinOf(msg), nil)
		if ctx.Err() != nil {
			late = append(late, msg)
			continue
		}
		p.take(ctx, msg, start)
	}
	p.pulled(start, batch.Error())
	for _, msg := range late {
		p.take(ctx, msg, start)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		return err
	}
	return nil
}

// take hands one pulled message on: the pin's takeover, then accept.
func (p puller) take(ctx context.Context, msg jetstream.Msg, start time.Time) {
	p.pin.takeover(ctx, p.cons, msg)
	p.accept(ctx, msg, start)
}

// heldMsg is one message a consumer holds: pulled, not yet acked, given
// back or terminated. Its delivery is heartbeated until it ends; a
// redelivery that arrives meanwhile replaces it, so that the answer goes to
// the newest delivery. The fields under mu are shared with the heartbeat and
// with the pull.
type heldMsg struct {
	seq uint64
	// stored is when the stream stored the message.
	stored time.Time

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
}

func newHeldMsg(msg jetstream.Msg, meta *jetstream.MsgMetadata, pulledAt time.Time) heldMsg {
	return heldMsg{seq: meta.Sequence.Stream, stored: meta.Timestamp, msg: msg, deliveries: meta.NumDelivered, confirmedAt: pulledAt}
}

// delivery returns the newest delivery of the message and its count.
func (h *heldMsg) delivery() (jetstream.Msg, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.msg, h.deliveries
}

// end stops the heartbeats and returns the delivery to answer and its count.
func (h *heldMsg) end() (jetstream.Msg, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.done = true
	return h.msg, h.deliveries
}

// redelivered makes a newer delivery of the held message the one to answer:
// its count is what the retry budget's end and the result go by, and this
// process holds the current delivery again. A count that skipped one means
// another consumer had the message in between.
func (h *heldMsg) redelivered(msg jetstream.Msg, deliveries uint64, pulledAt time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if deliveries <= h.deliveries {
		return
	}
	if deliveries > h.deliveries+1 {
		h.handedOut = true
	}
	h.msg, h.deliveries = msg, deliveries
	h.stale, h.confirmedAt = false, pulledAt
}

// handedOutNow reports whether another consumer may have had the message.
func (h *heldMsg) handedOutNow() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.handedOut
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

// checkStale marks the message stale by rule, and reports whether it is.
func (h *heldMsg) checkStale(now time.Time, rule staleRule) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.checkStaleLocked(now, rule)
}

func (h *heldMsg) checkStaleLocked(now time.Time, rule staleRule) bool {
	if h.stale || rule.after <= 0 || h.confirmedAt.IsZero() {
		return h.stale
	}
	age := now.Sub(h.confirmedAt)
	if age >= rule.silent || (age >= rule.after && rule.troubleAt.After(h.confirmedAt)) {
		h.stale, h.handedOut = true, true
	}
	return h.stale
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
	now     func() time.Time // the worker's clock
	mu      sync.Mutex
	msgs    map[uint64]*heldMsg
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

// round is one round of heartbeats: the messages it covered (at their
// delivery then) and which of its two bracketing requests were answered.
type round struct {
	at          time.Time
	msgs        []*heldMsg
	deliveries  []uint64
	first, last bool
}

func newHeldSet(now func() time.Time) *heldSet {
	return &heldSet{now: now, msgs: map[uint64]*heldMsg{}, changed: make(chan struct{}), rounds: map[uint64]*round{}}
}

// add registers m, or returns the message already held for the same
// sequence (a redelivery of a message this process still works on).
func (h *heldSet) add(m *heldMsg) (*heldMsg, bool) {
	h.mu.Lock()
	if prev, ok := h.msgs[m.seq]; ok {
		h.mu.Unlock()
		return prev, false
	}
	h.msgs[m.seq] = m
	nc, inbox, base := h.nc, h.inbox, h.base
	h.mu.Unlock()
	// The first heartbeat goes at once, answered on its own: the next
	// round may be a third of AckWait away, and the server's AckWait began
	// when it sent the message.
	if nc != nil {
		msg, deliveries := m.delivery()
		reply := inbox + ".j." + strconv.FormatUint(m.seq, 10) + "." + strconv.FormatUint(deliveries, 10) + "." +
			strconv.FormatInt(int64(h.now().Sub(base)), 10)
		_ = nc.PublishMsg(&nats.Msg{Subject: msg.Reply(), Reply: reply, Data: ackProgress})
	}
	return m, true
}

var ackProgress = []byte("+WPI")

func (h *heldSet) remove(m *heldMsg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.msgs[m.seq] == m {
		delete(h.msgs, m.seq)
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

// len returns how many messages are held, and a channel closed at the next
// removal.
func (h *heldSet) len() (int, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.msgs), h.changed
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
		h.nc, h.inbox, h.base = nc, inbox, h.now()
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

// snapshot returns the held messages in stream order. Every round sends
// its heartbeats in that one order, so that the server hears each message
// about an interval after its previous heartbeat even when it takes most of
// an interval to work through a round: in the map's random order a message
// heard first in one round and last in the next went an interval plus a
// whole round's processing unheard, past AckWait on a loaded server.
func (h *heldSet) snapshot() []*heldMsg {
	h.mu.Lock()
	out := make([]*heldMsg, 0, len(h.msgs))
	for _, m := range h.msgs {
		out = append(out, m)
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b *heldMsg) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// heartbeat sends one round: InProgress for every held message, the first
// and the last sent as requests. Rounds older than keep are forgotten.
func (h *heldSet) heartbeat(keep time.Duration) {
	now := h.now()
	held := h.snapshot()
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
	r := &round{at: now, msgs: make([]*heldMsg, 0, len(held)), deliveries: make([]uint64, 0, len(held))}
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
	for _, m := range held {
		m.mu.Lock()
		msg, deliveries, done := m.msg, m.deliveries, m.done
		if !done {
			m.checkStaleLocked(now, rule)
		}
		m.mu.Unlock()
		if !done {
			msgs = append(msgs, msg)
			r.msgs, r.deliveries = append(r.msgs, m), append(r.deliveries, deliveries)
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
		h.rule.troubleAt = h.now()
		h.mu.Unlock()
		return
	}
	parts := strings.Split(strings.TrimPrefix(m.Subject, h.inboxName()+"."), ".")
	now := h.now()
	switch {
	case len(parts) == 4 && parts[0] == "j":
		h.confirmedOne(parts[1:], now)
	case len(parts) == 3 && parts[0] == "r":
		h.confirmedRound(parts[1], parts[2], now)
	}
}

// confirmedOne takes the answer to a just-pulled message's own heartbeat,
// named by its sequence, delivery count and send time (an offset from base).
func (h *heldSet) confirmedOne(parts []string, now time.Time) {
	seq, err1 := strconv.ParseUint(parts[0], 10, 64)
	deliveries, err2 := strconv.ParseUint(parts[1], 10, 64)
	offset, err3 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return
	}
	h.mu.Lock()
	held, sent, rule := h.msgs[seq], h.base.Add(time.Duration(offset)), h.rule
	h.mu.Unlock()
	if held != nil {
		held.confirm(deliveries, sent, now, rule)
	}
}

// confirmedRound takes the answer to one of a round's two bracketing
// requests (which: first or last); with both in, the round arrived.
func (h *heldSet) confirmedRound(number, which string, now time.Time) {
	n, err := strconv.ParseUint(number, 10, 64)
	if err != nil {
		return
	}
	h.mu.Lock()
	r, rule := h.rounds[n], h.rule
	done := false
	if r != nil {
		if which == "first" {
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
		for i, m := range r.msgs {
			m.confirm(r.deliveries[i], r.at, now, rule)
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
func (h *heldMsg) confirm(deliveries uint64, sent, now time.Time, rule staleRule) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.deliveries != deliveries || h.done {
		return
	}
	// A gap that has already happened counts even if this answer ends it.
	if !h.checkStaleLocked(now, rule) && sent.After(h.confirmedAt) {
		h.confirmedAt = sent
	}
}

// stale reports whether a held message's heartbeats went unconfirmed for
// long enough that the server may have handed it to another consumer.
func (h *heldSet) stale(m *heldMsg) bool {
	h.mu.Lock()
	rule := h.rule
	h.mu.Unlock()
	return m.checkStale(h.now(), rule)
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
