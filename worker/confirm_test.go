package worker_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// withConfirm turns confirmations on against the env's simulated exchange.
func (e *env) withConfirm(timeout time.Duration) {
	e.cfg.Confirm = true
	e.cfg.ConfirmedSubject = "orders.cancel.confirmed"
	e.cfg.ConfirmTimeout = timeout
	e.cfg.WSURL = "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/v5/private"
}

// confirmations reads every confirmation stored, keyed by Nats-Msg-Id; two
// with one id fail the test (the stream must have deduplicated them).
func (e *env) confirmations() map[string]messages.Confirmation {
	e.t.Helper()
	c, err := e.js.OrderedConsumer(context.Background(), e.cfg.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{e.cfg.ConfirmedSubject}})
	if err != nil {
		return nil
	}
	// Each read deletes its consumer: left to their inactivity threshold, a
	// poll's consumers pile up on the server by the thousand.
	defer func() {
		if info := c.CachedInfo(); info != nil {
			_ = e.js.DeleteConsumer(context.Background(), e.cfg.Stream, info.Name)
		}
	}()
	out := map[string]messages.Confirmation{}
	for {
		batch, err := c.FetchNoWait(1000)
		require.NoError(e.t, err)
		n := 0
		for m := range batch.Messages() {
			n++
			conf, err := messages.DecodeConfirmation(m.Data())
			require.NoError(e.t, err)
			id := m.Headers().Get(nats.MsgIdHdr)
			_, dup := out[id]
			require.False(e.t, dup, "two confirmations of %s", id)
			out[id] = conf
		}
		if n == 0 {
			// A fetch that returns nothing at once is not the end on a
			// loaded server: the read is whole when nothing is pending.
			if info, err := c.Info(context.Background()); err == nil && info.NumPending > 0 {
				continue
			}
			return out
		}
	}
}

func (e *env) waitConfirmations(n int) map[string]messages.Confirmation {
	e.t.Helper()
	var got map[string]messages.Confirmation
	require.Eventually(e.t, func() bool {
		got = e.confirmations()
		return len(got) >= n
	}, waitFor, 10*time.Millisecond, "waiting for %d confirmations\n%s", n, e.logs)
	return got
}

// requireConfirmedCancelled waits for a confirmation of each of orders,
// cancelled by request seq, and requires each to say Cancelled.
func (e *env) requireConfirmedCancelled(seq uint64, orders []bybittest.Order) {
	e.t.Helper()
	got := e.waitConfirmations(len(orders))
	for _, o := range orders {
		require.Equal(e.t, "Cancelled", got[messages.ConfirmedMsgID(seq, o.OrderID, "")].OrderStatus)
	}
}

func (e *env) lookups() int {
	n := 0
	for _, q := range e.ex.Requests() {
		if q.Path == "/v5/order/realtime" || q.Path == "/v5/order/history" {
			n++
		}
	}
	return n
}

func TestConfirmationsInEveryCategoryOverTheWebSocket(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(10 * time.Second)
	var orders []bybittest.Order
	for i, c := range []struct{ category, symbol string }{
		{"spot", "BTCUSDT"}, {"linear", "ETHUSDT"}, {"inverse", "BTCUSD"}, {"option", "BTC-27DEC24-100000-C"},
	} {
		o := e.ex.AddOrder(bybittest.Order{Category: c.category, Symbol: c.symbol, OrderLinkID: fmt.Sprintf("link-%d", i)})
		orders = append(orders, o)
	}
	e.start()
	seqs := map[string]uint64{}
	for i, o := range orders {
		seqs[o.OrderID] = e.publish(cancelBody(o, i%2 == 1, "confirm-"+o.Category), "")
	}
	got := e.waitConfirmations(len(orders))
	results := e.waitResults(len(orders))
	for _, o := range orders {
		conf, ok := got[messages.ConfirmedMsgID(seqs[o.OrderID], o.OrderID, "")]
		require.True(t, ok, "a confirmation of %s under confirmed:<seq>:<orderId>", o.OrderID)
		require.Equal(t, "Cancelled", conf.OrderStatus)
		require.True(t, conf.Final)
		require.Equal(t, messages.ConfirmedByWebSocket, conf.ConfirmedBy)
		require.Equal(t, o.Category, conf.Category)
		require.Equal(t, o.Symbol, conf.Symbol)
		require.Equal(t, o.OrderLinkID, conf.OrderLinkID)
		require.Equal(t, "CancelByUser", conf.CancelType)
		require.Equal(t, "confirm-"+o.Category, conf.RequestID)
		require.Equal(t, messages.StatusCancelled, conf.ResultStatus)
		require.Positive(t, conf.UpdatedTime)
		require.False(t, conf.ConfirmedAt.Before(conf.AckTime))
		require.Equal(t, results[seqs[o.OrderID]].RequestSeq, conf.RequestSeq)
	}
	require.Zero(t, e.lookups(), "the stream answered; no REST lookup")
}

func TestAnOrderThatFillsBeforeTheCancelIsReportedFilled(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(10 * time.Second)
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", FillOnCancel: true})
	e.start()
	seq := e.publish(cancelBody(o, false, "fills"), "")
	require.Equal(t, messages.StatusCancelled, e.waitResults(1)[seq].Status, "Bybit accepted the cancel")
	conf := e.waitConfirmations(1)[messages.ConfirmedMsgID(seq, o.OrderID, "")]
	require.Equal(t, "Filled", conf.OrderStatus)
	require.True(t, conf.Final)
	require.Contains(t, e.logs.String(), "order not cancelled: Filled")
}

func TestAnUpdateBeforeTheAckStillMatches(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(10 * time.Second)
	o := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT"})
	// The cancel is applied and pushed, and its answer comes 500 ms later.
	e.ex.InjectFault(bybittest.Fault{Apply: true, Delay: 500 * time.Millisecond})
	e.start()
	seq := e.publish(cancelBody(o, false, ""), "")
	conf := e.waitConfirmations(1)[messages.ConfirmedMsgID(seq, o.OrderID, "")]
	require.Equal(t, "Cancelled", conf.OrderStatus)
	require.Equal(t, messages.ConfirmedByWebSocket, conf.ConfirmedBy)
	require.Less(t, conf.AckToConfirmMs, int64(5000), "matched from the recent updates, not after the timeout")
	require.Zero(t, e.lookups())
}

func TestAmbiguousNotOpenIsResolvedToWhatBybitReports(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(time.Second)
	e.timeout = 300 * time.Millisecond
	applied := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "applied"})
	gone := e.ex.AddOrder(bybittest.Order{Category: "inverse", Symbol: "BTCUSD", Status: "Filled", NotRecent: true})
	e.ex.InjectFault(
		// The first attempt is applied and its answer lost; the retry
		// finds the order not open.
		bybittest.Fault{Match: func(_, _, _, link string) bool { return link == "applied" }, Apply: true, Hangup: true},
		// Not open at the first try, after a lost (unapplied) attempt.
		bybittest.Fault{Match: func(c, _, _, _ string) bool { return c == "inverse" }, Hangup: true},
	)
	e.start()
	s1 := e.publish(cancelBody(applied, true, ""), "")
	s2 := e.publish(cancelBody(gone, false, ""), "")
	results := e.waitResults(2)
	for _, s := range []uint64{s1, s2} {
		require.Equal(t, messages.StatusNotOpen, results[s].Status)
		require.True(t, results[s].Ambiguous)
	}
	got := e.waitConfirmations(2)
	c1 := got[messages.ConfirmedMsgID(s1, "", "applied")]
	require.Equal(t, "Cancelled", c1.OrderStatus, "the lost attempt did cancel it; the stream said so before the ack")
	require.Equal(t, messages.ConfirmedByWebSocket, c1.ConfirmedBy)
	require.Equal(t, applied.OrderID, c1.OrderID, "filled in from the update")
	c2 := got[messages.ConfirmedMsgID(s2, gone.OrderID, "")]
	require.Equal(t, "Filled", c2.OrderStatus, "no update came: REST history says it had filled")
	require.Equal(t, messages.ConfirmedByREST, c2.ConfirmedBy)
	require.Equal(t, messages.StatusNotOpen, c2.ResultStatus)
}

func TestSocketDroppedMidBurstStillConfirmsEveryOrderOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(time.Second)
	const n = 40
	orders := e.addOrders(n, "linear", "BTCUSDT")
	e.start()
	require.Eventually(t, func() bool { return e.ex.PrivateSubscribers() == 1 }, waitFor, 5*time.Millisecond)
	for _, o := range orders {
		e.publish(cancelBody(o, false, ""), "")
	}
	// The burst drains over two seconds (10/s single + 10/s batch): drop
	// the socket in the middle, twice.
	e.waitResults(15)
	e.ex.DropPrivateConnections()
	require.Eventually(t, func() bool { return e.ex.PrivateAuths() == 2 && e.ex.PrivateSubscribers() == 1 }, waitFor, 5*time.Millisecond)
	e.waitResults(25)
	e.ex.DropPrivateConnections()
	results := e.waitResults(n)
	got := e.waitConfirmations(n)
	require.Len(t, got, n, "exactly one confirmation per acknowledged cancel")
	by := map[string]int{}
	for _, r := range results {
		require.Equal(t, messages.StatusCancelled, r.Status)
		conf, ok := got[messages.ConfirmedMsgID(r.RequestSeq, r.OrderID, "")]
		require.True(t, ok)
		require.Equal(t, "Cancelled", conf.OrderStatus)
		by[conf.ConfirmedBy]++
	}
	require.Zero(t, by[messages.ConfirmedByUnknown])
	require.Eventually(t, func() bool { return e.ex.PrivateAuths() == 3 && e.ex.PrivateSubscribers() == 1 }, waitFor, 5*time.Millisecond,
		"reconnected, re-authenticated and re-subscribed after each drop")
	e.settled()
}

func TestWorkerRestartLosesNoConfirmation(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(time.Minute)
	// Updates are held: confirmations wait on the stream when the worker
	// stops.
	e.ex.PausePushes()
	orders := e.addOrders(12, "spot", "ETHUSDT")
	r := e.start()
	for _, o := range orders {
		e.publish(cancelBody(o, false, ""), "")
	}
	e.waitResults(len(orders))
	require.Empty(t, e.confirmations())
	r.halt(t)

	// Bybit pushed the updates while no worker listened: a new stream does
	// not replay them, so the restarted worker finds them over REST.
	e.ex.ResumePushes()
	e.cfg.ConfirmTimeout = 200 * time.Millisecond
	e.start()
	got := e.waitConfirmations(len(orders))
	require.Len(t, got, len(orders))
	for _, c := range got {
		require.Equal(t, "Cancelled", c.OrderStatus)
		require.Equal(t, messages.ConfirmedByREST, c.ConfirmedBy)
	}
}

func TestCancelAllIsConfirmedOrderByOrder(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(10 * time.Second)
	for range 5 {
		e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "SOLUSDT"})
	}
	e.start()
	ack, err := e.js.Publish(context.Background(), e.cfg.CancelAllSubject, []byte(`{"category":"linear","settleCoin":"USDT","requestId":"kill"}`))
	require.NoError(t, err)
	res := e.waitResults(1)[ack.Sequence]
	require.Len(t, res.Orders, 5)
	got := e.waitConfirmations(5)
	for _, o := range res.Orders {
		conf := got[messages.ConfirmedMsgID(ack.Sequence, o.OrderID, "")]
		require.Equal(t, "Cancelled", conf.OrderStatus)
		require.Equal(t, "SOLUSDT", conf.Symbol, "the symbol comes from the update")
		require.Equal(t, "kill", conf.RequestID)
	}
}

func TestAWebSocketThatRefusesTheKeyIsAClearStartUpError(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(time.Second)
	// The private stream of another environment, which does not know the key.
	other := httptest.NewServer(bybittest.New(bybittest.Options{Accounts: []bybittest.Account{{APIKey: "someone-else", Secret: "x"}}}))
	t.Cleanup(other.Close)
	e.cfg.WSURL = "ws" + strings.TrimPrefix(other.URL, "http") + "/v5/private"
	w, err := worker.New(e.cfg, e.js, e.client())
	require.NoError(t, err)
	err = w.Setup(context.Background())
	require.ErrorContains(t, err, "private WebSocket")
	require.ErrorContains(t, err, "auth refused: Invalid apikey")
	require.NotContains(t, err.Error(), bybittest.DemoAPISecret)
}

func TestConfirmOffPublishesNoConfirmation(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	e.start()
	e.publish(cancelBody(o, false, ""), "")
	e.waitResults(1)
	e.settled()
	require.Zero(t, e.ex.PrivateAuths())
	_, err := e.js.Consumer(context.Background(), e.cfg.Stream, e.cfg.ConfirmConsumer())
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound)
}

// failLookups answers the first n order lookups with an HTML 502.
func (e *env) failLookups(n int32) *atomic.Int32 {
	var seen atomic.Int32
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v5/order/realtime" && seen.Add(1) <= n {
			http.Error(w, "<html>502 Bad Gateway</html>", http.StatusBadGateway)
			return
		}
		e.ex.ServeHTTP(w, r)
	})
	return &seen
}

// A private stream that cannot be reached, and lookups that fail for a
// while: the result is released and confirmed over REST once they work.
func TestFailingLookupsAreRetriedOnALaterDelivery(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(200 * time.Millisecond)
	e.cfg.WSURL = "ws://127.0.0.1:1/v5/private" // nothing listens there
	seen := e.failLookups(4)
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	e.start()
	seq := e.publish(cancelBody(o, false, ""), "")
	conf := e.waitConfirmations(1)[messages.ConfirmedMsgID(seq, o.OrderID, "")]
	require.Equal(t, "Cancelled", conf.OrderStatus)
	require.Equal(t, messages.ConfirmedByREST, conf.ConfirmedBy)
	require.Equal(t, int32(5), seen.Load(), "three failed lookups on the first delivery, one failed and one good on the next")
	require.Contains(t, e.logs.String(), "private order stream not reachable at start")
	require.Contains(t, e.logs.String(), "order lookup failed")
}

func TestOnTheLastDeliveryAnOrderWhoseLookupsFailIsReportedUnknown(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(200 * time.Millisecond)
	e.cfg.WSURL = "ws://127.0.0.1:1/v5/private"
	e.cfg.MaxDeliver = 1
	e.failLookups(1000)
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	e.start()
	seq := e.publish(cancelBody(o, false, ""), "")
	conf := e.waitConfirmations(1)[messages.ConfirmedMsgID(seq, o.OrderID, "")]
	require.Equal(t, messages.ConfirmedByUnknown, conf.ConfirmedBy)
	require.Empty(t, conf.OrderStatus)
	require.False(t, conf.Final)
	require.Contains(t, conf.Error, "gave up on the consumer's last delivery")
	require.Contains(t, conf.Error, "502")
}
