package worker_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

// Thousands of held messages, waiting on the rate limit several times longer
// than AckWait, are kept alive by the one heartbeat ticker: none is
// redelivered while the worker lives.
func TestThousandsOfHeldMessagesAreNotRedelivered(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true, Limits: map[string]int{"cancel/linear": 250, "cancel-batch/linear": 250}})
	// AckWait 2 s, a round every 667 ms: with 1 s, the embedded server of a
	// race-enabled test beside a second suite on 2 cores took up to 770 ms
	// to work through one round of 2,500 heartbeats (a 333 ms interval),
	// and once redelivered 1,872 of 3,000 after the rounds went in stream
	// order; that measures the test machine, not the heartbeat.
	e.cfg.AckWait = 2 * time.Second
	e.cfg.MaxAckPending = 5000
	e.cfg.Limits = map[string]int{"cancel/linear": 250, "cancel-batch/linear": 250}
	const n = 3000 // 6 s at 500/s: most messages wait past AckWait, the last three times it
	for i := range n {
		e.publish(map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": fmt.Sprint("hb-", i)}, "")
	}
	r := e.start()
	got := e.waitResults(n)
	require.Len(t, got, n)
	require.Zero(t, r.w.Stats().Redelivered.Load(), "no message was redelivered under a live worker")
	require.EqualValues(t, n, r.w.Stats().Received.Load())
	e.settled()
}
