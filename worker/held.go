package worker

import (
	"context"
	"errors"
	"log/slog"
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
	// outliveStop lets a fetch outlive a stop signal by at most its expiry,
	// so that messages already on their way reach accept (which gives them
	// back) instead of being lost until AckWait. Without it the fetch ends
	// with ctx: a message given back at a stop must not come back into the
	// same pull (each delivery counts to MaxDeliver).
	outliveStop bool
	accept      func(ctx context.Context, msg jetstream.Msg)
}

// run pulls until ctx ends.
func (p puller) run(ctx context.Context) {
	retry := newRetryBackoff()
	for ctx.Err() == nil {
		if p.ban != nil && p.ban.waitOpen(ctx) != nil {
			return
		}
		n, changed := p.held.len()
		room := p.max - n
		if room <= 0 {
			select {
			case <-ctx.Done():
			case <-changed:
			}
			continue
		}
		fctx := ctx
		if p.outliveStop {
			fctx = context.WithoutCancel(ctx)
		}
		fctx, cancel := context.WithTimeout(fctx, time.Second)
		err := p.fetch(ctx, fctx, room)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			p.log.Warn(p.name+"pull failed", "error", err)
			_ = sleepCtx(ctx, retry.NextBackOff())
			continue
		}
		retry.Reset()
	}
}

// fetch takes one batch of up to room messages to accept.
func (p puller) fetch(ctx, fctx context.Context, room int) error {
	batch, err := p.cons.Fetch(min(room, maxFetch), jetstream.FetchContext(fctx))
	if err != nil {
		return err
	}
	for msg := range batch.Messages() {
		p.accept(ctx, msg)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
		return err
	}
	return nil
}

// heldMsg is one message a consumer holds: pulled, not yet acked, given
// back or terminated. Its delivery is heartbeated until it is let go; a
// redelivery that arrives meanwhile replaces it, so that the answer goes to
// the newest delivery.
type heldMsg struct {
	seq uint64
	// stored is when the stream stored the message.
	stored time.Time

	mu         sync.Mutex
	msg        jetstream.Msg
	deliveries uint64
	done       bool
}

func newHeldMsg(msg jetstream.Msg, meta *jetstream.MsgMetadata) heldMsg {
	return heldMsg{seq: meta.Sequence.Stream, stored: meta.Timestamp, msg: msg, deliveries: meta.NumDelivered}
}

// redelivered takes a redelivery of the message in place of the delivery
// held so far.
func (h *heldMsg) redelivered(msg jetstream.Msg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msg = msg
}

// letGo stops the heartbeats and returns the delivery to answer.
func (h *heldMsg) letGo() jetstream.Msg {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.done = true
	return h.msg
}

// heartbeat tells the server the message is still being worked on.
func (h *heldMsg) heartbeat() {
	h.mu.Lock()
	msg, done := h.msg, h.done
	h.mu.Unlock()
	if !done {
		_ = msg.InProgress() // a lost heartbeat is retried at the next tick
	}
}

// heldSet is every message this process holds, keyed by stream sequence. One
// ticker heartbeats all of them, wherever they wait.
type heldSet struct {
	mu      sync.Mutex
	msgs    map[uint64]*heldMsg
	changed chan struct{}
}

func newHeldSet() *heldSet {
	return &heldSet{msgs: map[uint64]*heldMsg{}, changed: make(chan struct{})}
}

// add registers m, or returns the message already held for the same
// sequence (a redelivery of a message this process still works on).
func (h *heldSet) add(m *heldMsg) (*heldMsg, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if prev, ok := h.msgs[m.seq]; ok {
		return prev, false
	}
	h.msgs[m.seq] = m
	return m, true
}

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
// ctx ends.
func (h *heldSet) heartbeatLoop(ctx context.Context, ackWait time.Duration) {
	t := time.NewTicker(max(ackWait/3, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.heartbeat()
		}
	}
}

func (h *heldSet) snapshot() []*heldMsg {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*heldMsg, 0, len(h.msgs))
	for _, m := range h.msgs {
		out = append(out, m)
	}
	return out
}

// heartbeat keeps every held message alive with InProgress.
func (h *heldSet) heartbeat() {
	for _, m := range h.snapshot() {
		m.heartbeat()
	}
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
