package worker_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// With the single-cancel budget nearly spent, waiting cancels go out in
// batches; each order's answer maps back to its own request, a partly failed
// batch included.
func TestBatchAnswersMapBackPerRequest(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.Limits = map[string]int{"cancel/linear": 1, "cancel-batch/linear": 10} // the exchange's batch limit
	e.cfg.LimitCeilings = e.cfg.Limits                                           // explicit: not raised to what Bybit reports
	want := map[uint64]messages.Status{}
	orderOf := map[uint64]string{}
	for i := range 16 {
		if i%4 == 3 { // not open: unknown to the exchange
			seq := e.publish(map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": fmt.Sprint("gone-", i)}, "")
			want[seq] = messages.StatusNotOpen
			continue
		}
		o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: fmt.Sprint("link-", i)})
		seq := e.publish(cancelBody(o, i%2 == 0, ""), "")
		want[seq] = messages.StatusCancelled
		orderOf[seq] = o.OrderID
	}
	e.start()
	got := e.waitResults(len(want))
	for seq, status := range want {
		r := got[seq]
		require.Equal(t, status, r.Status, "%+v", r)
		require.False(t, r.Ambiguous)
		if status == messages.StatusCancelled {
			require.Equal(t, orderOf[seq], r.OrderID, "the batch item's orderId belongs to this request")
		} else {
			require.Equal(t, 110001, *r.RetCode)
		}
	}
	batched := 0
	for _, q := range e.ex.Requests() {
		if q.Path == "/v5/order/cancel-batch" {
			batched++
		}
	}
	require.GreaterOrEqual(t, batched, 10, "the batch budget carried most of the burst")
	require.Zero(t, e.requestsWith(10006))
	e.requireSettledWith(len(want))
}

// The exchange allows fewer batch orders than the worker believes: the items
// past the budget come back 10006 one by one and are requeued, not failed.
func TestBatchItemsAnswered10006AreRequeued(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true, OmitLimitHeader: true,
		Limits: map[string]int{"cancel/linear": 1, "cancel-batch/linear": 3}})
	e.cfg.Limits = map[string]int{"cancel/linear": 1, "cancel-batch/linear": 20}
	e.cfg.LimitCeilings = e.cfg.Limits // explicit: not raised to what Bybit reports
	const n = 12
	for _, r := range e.cancelledNumbered(n) {
		require.False(t, r.Ambiguous, "an item answered 10006 was not applied")
	}
	require.Positive(t, e.requestsWith(10006))
	e.requireSettledWith(n)
}

// Held cancels of the same order are sent once and all answered from it.
func TestDuplicateCancelsAreCoalesced(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	// The first cancel spends the only request of the window, so the three
	// duplicates are all held together when budget returns.
	e.cfg.Limits = map[string]int{"cancel/spot": 1}
	e.cfg.LimitCeilings = e.cfg.Limits // explicit: not raised to what Bybit reports
	e.cfg.Batch = false
	e.publish(cancelBody(e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT"}), false, "spend"), "")
	o := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT", OrderLinkID: "dup-1"})
	seqs := []uint64{
		e.publish(cancelBody(o, true, "first"), ""),
		e.publish(cancelBody(o, true, "second"), ""),
		e.publish(cancelBody(o, true, "third"), ""),
	}
	e.start()
	got := e.waitResults(len(seqs) + 1)
	for _, s := range seqs {
		require.Equal(t, messages.StatusCancelled, got[s].Status, "%+v", got[s])
		require.Equal(t, o.OrderID, got[s].OrderID)
	}
	require.Equal(t, 2, e.cancelRequests(), "one exchange call answered all three duplicates")
}

// A batch whose answer is lost after Bybit applied it: every order in it is
// retried and ends not_open, marked ambiguous.
func TestLostBatchResponseIsAmbiguousForEveryItem(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.Limits = map[string]int{"cancel/inverse": 1, "cancel-batch/inverse": 10}
	e.cfg.LimitCeilings = e.cfg.Limits // explicit: not raised to what Bybit reports
	var seqs []uint64
	var first bybittest.Order
	for i := range 6 {
		o := e.ex.AddOrder(bybittest.Order{Category: "inverse", Symbol: "BTCUSD"})
		if i == 1 {
			first = o
		}
		seqs = append(seqs, e.publish(cancelBody(o, false, ""), ""))
	}
	// The first order goes alone (single budget); the fault matches the
	// batch, whose first item is the second order.
	e.ex.InjectFault(bybittest.Fault{
		Match: func(_, _, orderID, _ string) bool { return orderID == first.OrderID },
		Apply: true, Hangup: true,
	})
	e.start()
	got := e.waitResults(len(seqs))
	lost := 0
	for _, s := range seqs {
		r := got[s]
		switch r.Status {
		case messages.StatusNotOpen: // it was in the batch whose answer was lost
			require.True(t, r.Ambiguous, "%+v", r)
			lost++
		case messages.StatusCancelled:
			require.False(t, r.Ambiguous, "%+v", r)
		default:
			t.Fatalf("unexpected %+v", r)
		}
	}
	require.GreaterOrEqual(t, lost, 1)
	for _, r := range got {
		if r.OrderID == first.OrderID {
			require.Equal(t, messages.StatusNotOpen, r.Status)
		}
	}
}

// Another client of the same account (another key of the UID) spent most of
// the window before the worker started: Bybit's X-Bapi-Limit-Status on the
// worker's first answer says so, and the worker slows down instead of
// running into 10006.
func TestHeadersOfAnotherClientKeepTheWorkerUnderTheLimit(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true, Accounts: []bybittest.Account{
		{APIKey: bybittest.DemoAPIKey, Secret: bybittest.DemoAPISecret, UID: "shared"},
		{APIKey: "other-key", Secret: "other-secret", UID: "shared"},
	}})
	e.cfg.Batch = false
	e.cfg.Concurrency = 1 // the worker learns from each answer before the next request
	other, err := bybit.NewClient(bybit.Options{BaseURL: e.srv.URL, APIKey: "other-key", APISecret: "other-secret"})
	require.NoError(t, err)
	e.start()
	for i := range 7 {
		_, err := other.CancelOrder(t.Context(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: fmt.Sprint("other-", i)})
		require.NoError(t, err)
	}
	const n = 20
	for i := range n {
		e.publish(map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": fmt.Sprint("mine-", i)}, "")
	}
	got := e.waitResults(n)
	for _, r := range got {
		require.Equal(t, messages.StatusCancelled, r.Status)
	}
	require.Zero(t, e.requestsWith(10006), "the headers kept the worker inside the shared budget")
}

// Issue 13, defect 5: with batching on, held cancels of one order that come
// out of the queue together in a batch are sent once, and every copy is
// answered from that call (sent three times, two of them came back not_open
// and not ambiguous although the cancel worked).
func TestDuplicateCancelsInOneBatchAreSentOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.Limits = map[string]int{"cancel/spot": 1, "cancel-batch/spot": 3}
	spendOne := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT"})
	var spendBatch []bybittest.Order
	for range 3 {
		spendBatch = append(spendBatch, e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT"}))
	}
	o := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT", OrderLinkID: "dup-b"})
	other := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT"})

	// The single cancel's budget stays spent until the end and the batch
	// budget until the duplicates are all held: they then leave together.
	singleHeld, batchHeld := make(chan struct{}), make(chan struct{})
	var seen sync.Map
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if !holdCallOf(body, &seen, singleHeld, spendOne) {
			holdCallOf(body, &seen, batchHeld, spendBatch...)
		}
		e.ex.ServeHTTP(w, r)
	})
	e.publish(cancelBody(spendOne, false, ""), "")
	for _, s := range spendBatch {
		e.publish(cancelBody(s, false, ""), "")
	}
	seqs := []uint64{
		e.publish(cancelBody(o, true, "first"), ""),
		e.publish(cancelBody(o, true, "second"), ""),
		e.publish(cancelBody(o, true, "third"), ""),
	}
	otherSeq := e.publish(cancelBody(other, false, ""), "")
	r := e.start()
	require.Eventually(t, func() bool {
		return syncMapLen(&seen) == 4 && r.w.Stats().Received.Load() == 8
	}, waitFor, 5*time.Millisecond)
	close(batchHeld)
	require.Eventually(t, func() bool {
		return e.resultFor(seqs[0]) && e.resultFor(seqs[1]) && e.resultFor(seqs[2]) && e.resultFor(otherSeq)
	}, waitFor, 5*time.Millisecond, "%s", e.logs)
	close(singleHeld)
	got := e.waitResults(8)
	for _, s := range seqs {
		require.Equal(t, messages.StatusCancelled, got[s].Status, "%+v", got[s])
		require.Equal(t, o.OrderID, got[s].OrderID)
	}
	require.Equal(t, messages.StatusCancelled, got[otherSeq].Status)
	require.Equal(t, 1, cancelsSentFor(e, o.OrderLinkID), "one exchange call answered all three duplicates")
}

// holdCallOf holds an exchange call whose body carries one of orders until
// release is closed, and records in seen which of them it carried. It
// reports whether it held the call.
func holdCallOf(body []byte, seen *sync.Map, release <-chan struct{}, orders ...bybittest.Order) bool {
	held := false
	for _, o := range orders {
		if bytes.Contains(body, []byte(o.OrderID)) {
			seen.Store(o.OrderID, true)
			held = true
		}
	}
	if held {
		<-release
	}
	return held
}

func syncMapLen(m *sync.Map) int {
	n := 0
	m.Range(func(any, any) bool { n++; return true })
	return n
}

// cancelsSentFor counts the single and batch cancels the exchange received
// for the order of orderLinkID.
func cancelsSentFor(e *env, orderLinkID string) int {
	sent := 0
	for _, q := range e.ex.Requests() {
		if isCancel(q) && q.OrderLinkID == orderLinkID {
			sent++
		}
	}
	return sent
}

// Where the IP limit is the scarcer budget, a request carries as many
// orders as it may: singles (one order an IP request) do not spend the IP
// window the batches (up to 20 orders an IP request) need, so a burst the
// batch budget can carry fits in one IP window.
func TestScarceIPLimitGoesToBatches(t *testing.T) {
	t.Parallel()
	limits := map[string]int{"cancel/linear": 50, "cancel-batch/linear": 50}
	e := setup(t, bybittest.Options{AutoCreate: true, Limits: limits})
	e.cfg.Limits = limits
	e.cfg.LimitCeilings = limits
	e.cfg.IPLimit = worker.Rate{N: 15, Per: 5 * time.Second} // the batches need 3 a second
	const n = 100
	e.cancelledNumbered(n)
	requests := map[string]bool{} // the log has a line per order of a batch
	for _, q := range e.ex.Requests() {
		if q.Path == "/v5/order/cancel" || q.Path == "/v5/order/cancel-batch" {
			requests[q.Path+q.Arrived.String()+q.RemoteAddr] = true
		}
	}
	require.LessOrEqual(t, len(requests), 15, "the burst went in one IP window's requests")
	require.Zero(t, e.requestsWith(10006))
	e.settled()
}
