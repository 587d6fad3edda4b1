package worker_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

func (e *env) publishAll(body string) uint64 {
	e.t.Helper()
	ack, err := e.js.Publish(e.t.Context(), e.cfg.CancelAllSubject, []byte(body))
	require.NoError(e.t, err)
	return ack.Sequence
}

// A futures cancel-all cancels at most 500 orders a call: the worker repeats
// it until an answer comes back short, and lists every order in one result.
func TestCancelAllRepeatsUntilTheListComesBackShort(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	const n = 1203
	for i := range n {
		e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: fmt.Sprint("k-", i)})
	}
	other := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "ETHUSDT"})
	seq := e.publishAll(`{"category":"linear","symbol":"BTCUSDT","requestId":"kill-switch-1"}`)
	e.start()
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	require.Len(t, r.Orders, n)
	require.Equal(t, 3, r.Attempts, "500 + 500 + 203")
	require.Equal(t, "kill-switch-1", r.RequestID)
	seen := map[string]bool{}
	for _, o := range r.Orders {
		require.False(t, seen[o.OrderID], "listed once")
		seen[o.OrderID] = true
	}
	st, _ := e.ex.Order("linear", other.OrderID)
	require.Equal(t, "New", st.Status, "another symbol is left alone")
	e.settled()
}

func TestCancelAllSuccessZeroIsRejected(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.ex.SetCancelAllFails(true)
	seq := e.publishAll(`{"category":"spot"}`)
	e.start()
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusRejected, r.Status)
	require.Contains(t, r.RetMsg, `success "0"`)
}

// When a later call of the repeat loop fails, the result says so and still
// lists what the earlier calls cancelled.
func TestCancelAllLaterFailureKeepsTheOrdersCancelledBefore(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	for range 700 {
		e.ex.AddOrder(bybittest.Order{Category: "inverse", Symbol: "BTCUSD"})
	}
	var calls atomic.Int32
	e.ex.InjectFault(bybittest.Fault{
		Match:   func(string, string, string, string) bool { return calls.Add(1) == 2 },
		RetCode: 10001, RetMsg: "params error",
	})
	seq := e.publishAll(`{"category":"inverse","baseCoin":"BTC"}`)
	e.start()
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusRejected, r.Status)
	require.Equal(t, 10001, *r.RetCode)
	require.Len(t, r.Orders, 500)
}

func TestInvalidCancelAllIsAnswered(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	seq := e.publishAll(`{"category":"linear"}`)
	e.start()
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusInvalid, r.Status)
	require.Contains(t, r.Error, "needs one of symbol")
}
