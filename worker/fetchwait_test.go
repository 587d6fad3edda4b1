package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// A cancel the server delivered to a pull shortly before the pull expired,
// on a link that brings the server's bytes to the worker late: the worker
// takes it from that pull, as its first delivery. A pull ends when the
// server says so (the 408 it sends after every message it delivered to the
// pull, on the same connection), not on a clock of the worker's: a pull that
// ended at its own deadline (a tenth of a pull after the server's expiry)
// stopped reading its inbox while the cancel was still on its way, and the
// server, counting it delivered, handed it out again only after AckWait —
// a kill-switch cancel late by AckWait, and marked ambiguous.
//
// The link's delay is the one span of time in the test: the server's bytes
// are held from before the delivery until the worker pulls again (its pull
// ended without them) or, at the latest, linkDelay after the server expired
// the pull. linkDelay is above the tenth of a pull a pull's own deadline
// left, and well below the second after its expiry that a pull waits for
// the server's word.
func TestACancelDeliveredAsAPullEndsIsTakenFromThatPull(t *testing.T) {
	t.Parallel()
	const linkDelay = 300 * time.Millisecond
	e := setup(t, bybittest.Options{})
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	p := newProxy(t, e.ns.Addr().String())
	startWorkerVia(t, e.cfg, p.url(), e.srv.URL)

	cons, err := e.js.Consumer(context.Background(), e.cfg.Stream, e.cfg.Consumer)
	require.NoError(t, err)
	info := func() *jetstream.ConsumerInfo {
		i, err := cons.Info(context.Background())
		if err != nil {
			return &jetstream.ConsumerInfo{NumWaiting: -1}
		}
		return i
	}
	require.Eventually(t, func() bool { return info().NumWaiting == 1 }, waitFor, 5*time.Millisecond,
		"the worker's pull waits at the server\n%s", e.logs)

	p.freezeDown()
	seq := e.publish(cancelBody(o, false, "late"), "")
	require.Eventually(t, func() bool {
		i := info()
		return i.Delivered.Consumer == 1 && i.NumAckPending == 1
	}, waitFor, time.Millisecond, "the server delivered the cancel into the slow link")
	require.Eventually(t, func() bool { return info().NumWaiting == 0 }, waitFor, time.Millisecond,
		"the pull that took the cancel expired at the server")
	expired := time.Now()
	pulledAgain := false
	require.Eventually(t, func() bool {
		pulledAgain = info().NumWaiting > 0
		return pulledAgain || time.Since(expired) >= linkDelay
	}, waitFor, time.Millisecond)
	p.thaw()
	t.Logf("the worker pulled again before the link brought the cancel: %v", pulledAgain)

	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	require.EqualValues(t, 1, r.Deliveries, "the cancel was taken from a later delivery, AckWait late: %+v\n%s", r, e.logs)
	require.False(t, r.Ambiguous, "%+v", r)
	e.requireSettledWith(1)
	require.Zero(t, info().NumRedelivered)
}
