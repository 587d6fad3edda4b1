package worker

import (
	"context"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// job is one held message: pulled, not yet answered. Its processing state is
// touched by one goroutine at a time (the lane, then the sender, then the
// finisher); only msg and done are shared with the heartbeat.
type job struct {
	seq         uint64
	deliveries  uint64
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

// heldSet is every message this process holds, keyed by stream sequence. One
// ticker heartbeats all of them, wherever they wait.
type heldSet struct {
	mu      sync.Mutex
	jobs    map[uint64]*job
	changed chan struct{}
}

func newHeldSet() *heldSet {
	return &heldSet{jobs: map[uint64]*job{}, changed: make(chan struct{})}
}

// add registers j, or returns the job already held for the same sequence (a
// redelivery of a message this process still works on).
func (h *heldSet) add(j *job) (*job, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if prev, ok := h.jobs[j.seq]; ok {
		return prev, false
	}
	h.jobs[j.seq] = j
	return j, true
}

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

func (h *heldSet) snapshot() []*job {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*job, 0, len(h.jobs))
	for _, j := range h.jobs {
		out = append(out, j)
	}
	return out
}

// heartbeat keeps every held message alive with InProgress.
func (h *heldSet) heartbeat() {
	for _, j := range h.snapshot() {
		j.mu.Lock()
		msg, done := j.msg, j.done
		j.mu.Unlock()
		if !done {
			_ = msg.InProgress() // a lost heartbeat is retried at the next tick
		}
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
