package worker_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// JetStream deduplicates by Nats-Msg-Id across every subject of a stream, and
// a result's id is predictable ("result:<requestSeq>"). A request that
// carries such an id (by mistake, or from a desk whose permissions allow only
// its own subject) must not make another request's result vanish; the
// request itself is answered invalid, naming the reserved prefix.
func TestARequestsMsgIDCannotSuppressAnotherRequestsResult(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	st, err := e.js.Stream(context.Background(), e.cfg.Stream)
	require.NoError(t, err)
	next := st.CachedInfo().State.LastSeq + 1
	o1 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	o2 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	a := e.publish(cancelBody(o1, false, "a"), fmt.Sprintf("result:%d", next+1))
	b := e.publish(cancelBody(o2, false, "b"), "")
	require.Equal(t, next+1, b)
	run := e.start()
	e.settled()
	st2, _ := e.ex.Order("linear", o2.OrderID)
	require.Equal(t, "Cancelled", st2.Status, "b's cancel was sent")
	got := e.waitResults(2)
	require.Contains(t, got, a)
	require.Contains(t, got, b, "request b was cancelled and acked, but its result was dropped as a duplicate of request a")
	require.Equal(t, messages.StatusCancelled, got[b].Status)
	require.Equal(t, messages.StatusInvalid, got[a].Status)
	require.Contains(t, got[a].Error, `"result:"`)
	st1, _ := e.ex.Order("linear", o1.OrderID)
	require.Equal(t, "New", st1.Status, "a request with a reserved Nats-Msg-Id is not sent")
	require.EqualValues(t, 1, run.w.Stats().MsgIDCollisions.Load(), "b's result was stored under its fallback id, and counted")
	require.Contains(t, e.logs.String(), "result stored under its fallback id")
}
