package worker_test

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
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
	require.True(t, *r.OrdersComplete)
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

// countCancelAlls counts the cancel-all calls that reach the exchange, so
// that a fault can pick the nth.
func (e *env) countCancelAlls() *atomic.Int32 {
	var calls atomic.Int32
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v5/order/cancel-all" {
			calls.Add(1)
		}
		e.ex.ServeHTTP(w, r)
	})
	return &calls
}

// releasedAtCall answers the cancel-all calls numbered call and call+1 (as
// they arrive) with a 503 HTML page, under a retry budget shorter than the
// first backoff: the second 503 spends it and the request is released
// mid-loop.
func (e *env) releasedAtCall(call int32) {
	e.cfg.RetryBudget = 50 * time.Millisecond
	calls := e.countCancelAlls()
	at := func(string, string, string, string) bool { n := calls.Load(); return n == call || n == call+1 }
	unavailable := bybittest.Fault{Match: at, Status: 503, Body: "<html>Service Unavailable</html>"}
	e.ex.InjectFault(unavailable, unavailable)
}

// requireListsEveryCancelledOrder checks that the exchange cancelled every
// one of orders and that the result lists each, once.
func (e *env) requireListsEveryCancelledOrder(r messages.Result, orders []bybittest.Order) {
	e.t.Helper()
	require.Equal(e.t, len(orders), len(r.Orders), "orders listed in the result")
	listed := map[string]bool{}
	for _, o := range r.Orders {
		require.False(e.t, listed[o.OrderID], "listed once: %s", o.OrderID)
		listed[o.OrderID] = true
	}
	for _, o := range orders {
		st, _ := e.ex.Order(o.Category, o.OrderID)
		require.Equal(e.t, "Cancelled", st.Status)
		require.True(e.t, listed[o.OrderID], "order %s was cancelled by the exchange but is missing from the result", o.OrderID)
	}
}

// Bybit cancels at most 500 futures orders a call. The second call is
// answered 503 twice, which spends the retry budget: the request is released
// and its redelivery cancels the remaining 200. The result lists all 700 —
// the 500 the first delivery cancelled too — and each gets its confirmation.
func TestCancelAllReleasedMidLoopOnItsRetryBudgetListsEveryOrder(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(10 * time.Second)
	orders := e.addOrders(700, "inverse", "BTCUSD")
	e.releasedAtCall(2)
	seq := e.publishAll(`{"category":"inverse","baseCoin":"BTC","requestId":"kill-700"}`)
	e.start()
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	require.EqualValues(t, 2, r.Deliveries, "released once, mid-loop")
	e.requireListsEveryCancelledOrder(r, orders)
	require.True(t, r.Ambiguous)
	require.NotNil(t, r.OrdersComplete)
	require.False(t, *r.OrdersComplete, "a 503 may come after Bybit cancelled orders it never listed: the result cannot claim the list is whole")
	e.requireConfirmedCancelled(seq, orders)
	e.settled()
}

// A worker stopped between two calls of the repeat loop releases the
// request; another worker takes the redelivery and finishes it. Its result
// lists what both cancelled.
func TestCancelAllStoppedMidLoopIsFinishedByAnotherWorker(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	orders := e.addOrders(1203, "linear", "BTCUSDT")
	calls := e.countCancelAlls()
	// One request an hour: the first call goes, the second waits for the
	// IP budget, and the stop comes while it waits (a call already on its
	// way is answered and booked before the worker stops).
	e.cfg.IPLimit = worker.Rate{N: 1, Per: time.Hour}
	seq := e.publishAll(`{"category":"linear","symbol":"BTCUSDT","requestId":"kill-1203"}`)
	first := e.start()
	require.Eventually(t, func() bool { return calls.Load() == 1 }, waitFor, 5*time.Millisecond)
	first.halt(t)
	require.EqualValues(t, 1, calls.Load(), "stopped between the calls")

	e.cfg.IPLimit = worker.Rate{}
	e.start()
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	require.EqualValues(t, 2, r.Deliveries)
	require.Equal(t, 2, r.Attempts, "500 + 203 by the second worker")
	e.requireListsEveryCancelledOrder(r, orders)
	require.True(t, *r.OrdersComplete, "the first worker recorded its call, and that it made no other")
	e.settled()
}

// On a stream of the operator's that does not capture the progress subject
// the worker starts (with a warning); a cancel-all redelivered after it
// partly ran lists what its own delivery cancelled and says that the list
// may be incomplete.
func TestCancelAllOnAStreamWithoutProgressSaysItsListMayBeIncomplete(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	ctx := t.Context()
	s, err := e.js.Stream(ctx, e.cfg.Stream)
	require.NoError(t, err)
	operators := s.CachedInfo().Config
	operators.Metadata = nil
	operators.Subjects = []string{"orders.cancel", "orders.cancel-all", "orders.cancel.ack", "orders.cancel.rejected"}
	_, err = e.js.UpdateStream(ctx, operators)
	require.NoError(t, err)
	orders := e.addOrders(700, "inverse", "BTCUSD")
	calls := e.countCancelAlls()
	e.cfg.IPLimit = worker.Rate{N: 1, Per: time.Hour}
	seq := e.publishAll(`{"category":"inverse","baseCoin":"BTC"}`)
	first := e.start()
	require.Contains(t, e.logs.String(), "does not capture the cancel-all progress subject")
	require.Eventually(t, func() bool { return calls.Load() == 1 }, waitFor, 5*time.Millisecond)
	first.halt(t)

	e.cfg.IPLimit = worker.Rate{}
	e.start()
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	require.Len(t, r.Orders, 200, "what the second delivery cancelled")
	require.NotNil(t, r.OrdersComplete)
	require.False(t, *r.OrdersComplete, "the first delivery's 500 are not known")
	for _, o := range orders {
		st, _ := e.ex.Order(o.Category, o.OrderID)
		require.Equal(t, "Cancelled", st.Status)
	}
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, operators.Subjects, info.Config.Subjects, "the operator's stream is left unchanged")
	e.settled()
}
