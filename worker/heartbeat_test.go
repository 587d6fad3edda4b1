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
	// AckWait 2 s, a round every 667 ms. Race-enabled beside two full
	// suites on 2 cores (also at GOMAXPROCS=1), a round took at most 370 ms
	// to send and its last bracket was answered within 900 ms, inside the
	// stale rule's 1.67 s: no message went stale. The 400 to 2,400
	// redeliveries seen there were every message not yet sent, released
	// unsent when the replica's own lease ran out between two late pulls
	// (TestAPullingReplicaKeepsItsLeaseBetweenLatePulls).
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
