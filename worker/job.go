package worker

import (
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// job is one held request being worked on: pulled, not yet answered. Its
// processing state is touched by one goroutine at a time (the lane, then the
// sender, then the finisher); only the held message is shared with the
// heartbeat. Its stored time is the request's time.
type job struct {
	heldMsg
	req messages.Cancel
	// all is set instead of req for a cancel-all request; prog is its
	// progress once it runs.
	all       *messages.CancelAll
	prog      *cancelAllProgress
	requestID string
	lane      *lane

	// queuedAt is when the job last entered its lane: the time until it is
	// dispatched is time spent waiting for rate-limit budget.
	queuedAt      time.Time
	attempts      int
	ambiguous     bool
	rateLimitWait time.Duration
	sentAt        time.Time
	retry         retryState
	// noBatch: a batch carrying it was refused as a whole; it goes alone.
	noBatch bool
	// invalid is the result of a request that cannot be sent (its Status
	// is empty otherwise).
	invalid messages.Result
}

// attrs are the job's log attributes, then extra.
func (j *job) attrs(extra ...any) []any {
	return append([]any{"requestId", j.requestID, "seq", j.seq, "category", j.req.Category, "symbol", j.req.Symbol,
		"orderId", j.req.OrderID, "orderLinkId", j.req.OrderLinkID, "attempts", j.attempts}, extra...)
}
