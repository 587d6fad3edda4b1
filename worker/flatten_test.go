package worker_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// everyKindOfOrder fills the book with resting orders of every kind in
// every category: spot normal, TP/SL, stop and OCO; linear settled in USDT
// (more than 500 in one coin) and in USDC; inverse in three coins; option.
func everyKindOfOrder(ex *bybittest.Exchange) []bybittest.Order {
	var all []bybittest.Order
	add := func(n int, o bybittest.Order) {
		for i := range n {
			o.OrderLinkID = fmt.Sprintf("%s-%s-%s-%d", o.Category, o.Symbol, o.Kind, i)
			all = append(all, ex.AddOrder(o))
		}
	}
	for _, kind := range []string{"Order", "tpslOrder", "StopOrder", "OcoOrder"} {
		add(3, bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Kind: kind})
	}
	add(4, bybittest.Order{Category: "spot", Symbol: "ETHUSDT"})
	add(620, bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	add(5, bybittest.Order{Category: "linear", Symbol: "ETHUSDT", Kind: "StopOrder"})
	add(6, bybittest.Order{Category: "linear", Symbol: "ETHPERP", SettleCoin: "USDC"})
	add(4, bybittest.Order{Category: "linear", Symbol: "BTC-27MAR26", SettleCoin: "USDC"})
	add(7, bybittest.Order{Category: "inverse", Symbol: "BTCUSD"})
	add(3, bybittest.Order{Category: "inverse", Symbol: "BTCUSDH26"})
	add(5, bybittest.Order{Category: "inverse", Symbol: "ETHUSD"})
	add(2, bybittest.Order{Category: "inverse", Symbol: "XRPUSD", Kind: "StopOrder"})
	add(6, bybittest.Order{Category: "option", Symbol: "BTC-27MAR26-100000-C"})
	add(2, bybittest.Order{Category: "option", Symbol: "ETH-27MAR26-4000-P", Kind: "StopOrder"})
	return all
}

// A flatten cancels every order of the account, of every kind, in every
// category and coin, in one request: each once, the result complete and
// counted per category, and each order confirmed.
func TestFlattenCancelsEveryOrderOfTheAccountOnceAndConfirmsEach(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(10 * time.Second)
	orders := everyKindOfOrder(e.ex)
	e.start()
	seq := e.publishAll(`{"scope":"account","requestId":"flatten-1"}`)
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r.LastError)
	require.Equal(t, messages.ScopeAccount, r.Scope)
	require.True(t, *r.Complete)
	require.True(t, *r.OrdersComplete)
	require.Empty(t, r.Left)
	require.Equal(t, 1, r.Rounds, "one round, and a second look found nothing")
	require.Equal(t, map[string]int{"spot": 16, "linear": 635, "inverse": 17, "option": 8}, r.Cancelled)

	require.Len(t, r.Orders, len(orders))
	listed := map[string]messages.OrderRef{}
	for _, o := range r.Orders {
		_, dup := listed[o.OrderID]
		require.False(t, dup, "listed once: %s", o.OrderID)
		listed[o.OrderID] = o
	}
	for _, o := range orders {
		st, _ := e.ex.Order(o.Category, o.OrderID)
		require.Contains(t, []string{"Cancelled", "Deactivated"}, st.Status, "%s %s", o.Category, o.OrderLinkID)
		require.Equal(t, o.Category, listed[o.OrderID].Category)
	}
	cancelsSent := 0
	for _, q := range e.ex.Requests() {
		if q.Path == "/v5/order/cancel" || q.Path == "/v5/order/cancel-batch" {
			cancelsSent++
		}
	}
	require.Zero(t, cancelsSent, "cancel-alls only")

	got := e.waitConfirmations(len(orders))
	for _, o := range orders {
		conf, ok := got[messages.ConfirmedMsgID(seq, o.OrderID, o.OrderLinkID)]
		require.True(t, ok, "confirmation of %s", o.OrderLinkID)
		require.True(t, conf.Final, "%+v", conf)
		require.Equal(t, o.Category, conf.Category)
		require.Equal(t, o.Symbol, conf.Symbol)
	}
	e.settled()
}

// Orders placed as fast as they are cancelled (a strategy still quoting):
// the flatten stops after its bound of rounds and says what is left.
func TestFlattenWhileOrdersKeepBeingPlacedEndsIncompleteWithWhatIsLeft(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	for range 3 {
		e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "SOLUSDT"})
	}
	quoter := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Respawn: true})
	e.start()
	seq := e.publishAll(`{"scope":"account"}`)
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusFailed, r.Status)
	require.False(t, *r.Complete)
	require.Equal(t, 5, r.Rounds)
	require.Len(t, r.Left, 1)
	require.Equal(t, "spot", r.Left[0].Category)
	require.Equal(t, "BTCUSDT", r.Left[0].Symbol)
	require.NotEqual(t, quoter.OrderID, r.Left[0].OrderID, "a new quote")
	require.Contains(t, r.LastError, "1 open orders left after 5 rounds")
	require.Equal(t, 3, r.Cancelled["linear"])
	require.Equal(t, 5, r.Cancelled["spot"], "one quote a round")
	e.settled()
}

// Bybit refusing one category's cancel-all (no permission) does not stop
// the others; the result is rejected, with Bybit's answer and what is left.
func TestFlattenRefusedInOneCategoryCancelsTheOthersAndSaysWhy(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	opt := e.ex.AddOrder(bybittest.Order{Category: "option", Symbol: "BTC-27MAR26-100000-C"})
	lin := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v5/order/cancel-all" {
			body := peekBody(r)
			if body["category"] == "option" {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"retCode":10005,"retMsg":"Permission denied, please check your API key permissions.","result":{},"retExtInfo":{},"time":1}`))
				return
			}
		}
		e.ex.ServeHTTP(w, r)
	})
	e.start()
	seq := e.publishAll(`{"scope":"account"}`)
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusRejected, r.Status)
	require.Equal(t, 10005, *r.RetCode)
	require.False(t, *r.Complete)
	require.Equal(t, []messages.OrderRef{{OrderID: opt.OrderID, Category: "option", Symbol: opt.Symbol}}, r.Left)
	st, _ := e.ex.Order("linear", lin.OrderID)
	require.Equal(t, "Cancelled", st.Status)
	require.Equal(t, 1, r.Rounds, "a refused call is not sent again")
	e.settled()
}

// peekBody decodes a request's JSON body and puts it back for the handler.
func peekBody(r *http.Request) map[string]any {
	data, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(data))
	var m map[string]any
	_ = json.Unmarshal(data, &m)
	return m
}

// A flatten released mid-run (its linear repeat loop's retry budget spent
// on 503s) is
// finished by its redelivery, which reads the progress records: the result
// lists what both deliveries cancelled, each once, with its category.
func TestFlattenReleasedMidRunListsWhatEveryDeliveryCancelled(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(10 * time.Second)
	orders := e.addOrders(700, "linear", "BTCUSDT")
	orders = append(orders, e.addOrders(3, "spot", "ETHUSDT")...)
	// Calls 1-5 are spot's filters, 6 the first linear USDT call (500
	// orders): its repeat, call 7, meets the 503s.
	e.releasedAtCall(7)
	seq := e.publishAll(`{"scope":"account","requestId":"flatten-703"}`)
	e.start()
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r.LastError)
	require.EqualValues(t, 2, r.Deliveries, "released once, mid-run")
	require.True(t, *r.Complete)
	require.False(t, *r.OrdersComplete, "a 503 may have cancelled orders it never listed")
	require.Equal(t, map[string]int{"spot": 3, "linear": 700}, r.Cancelled)
	e.requireListsEveryCancelledOrder(r, orders)
	e.requireConfirmedCancelled(seq, orders)
	e.settled()
}

// Bybit's cancel is asynchronous: for a while after a cancel-all answered,
// the open-order list may still show the orders it cancelled. The flatten
// waits for the list to catch up instead of cancelling them again, and
// ends complete.
func TestFlattenWaitsForTheOpenListToCatchUpWithItsCancels(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.ex.SetOpenListLag(300 * time.Millisecond)
	orders := e.addOrders(30, "linear", "BTCUSDT")
	orders = append(orders, e.ex.AddOrder(bybittest.Order{Category: "inverse", Symbol: "ETHUSD"}))
	calls := e.countCancelAlls()
	e.start()
	seq := e.publishAll(`{"scope":"account"}`)
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, r.Status, "%s", r.LastError)
	require.True(t, *r.Complete)
	require.Empty(t, r.Left)
	e.requireListsEveryCancelledOrder(r, orders)
	require.EqualValues(t, 2, calls.Load(), "one cancel-all for linear USDT, one for inverse ETH: none sent again for orders already cancelled")
	e.settled()
}
