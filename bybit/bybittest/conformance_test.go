package bybittest_test

// Published Go SDKs that no one here wrote, driven against the simulator:
// their signatures must be accepted and their decoders must read the
// answers. github.com/hirokisan/bybit/v2 covers what it implements (it has no
// v5 cancel-batch and reads time from a v3 path);
// github.com/bybit-exchange/bybit.go.api (Bybit's own) covers cancel-batch,
// /v5/market/time and signs with a recv window.

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	bybitapi "github.com/bybit-exchange/bybit.go.api"
	hiro "github.com/hirokisan/bybit/v2"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

var sdkSymbols = map[hiro.CategoryV5]string{
	hiro.CategoryV5Spot: "BTCUSDT", hiro.CategoryV5Linear: "BTCUSDT", hiro.CategoryV5Inverse: "BTCUSD", hiro.CategoryV5Option: "BTC-27DEC24-100000-C",
}

func newSDKSim(t *testing.T) (*bybittest.Exchange, *httptest.Server) {
	ex := bybittest.New(bybittest.Options{})
	srv := httptest.NewServer(ex)
	t.Cleanup(srv.Close)
	return ex, srv
}

func TestHirokisanSDKCancelsLooksUpAndReadsKeyInfo(t *testing.T) {
	t.Parallel()
	ex, srv := newSDKSim(t)
	c := hiro.NewClient().WithBaseURL(srv.URL).WithAuth(bybittest.DemoAPIKey, bybittest.DemoAPISecret)
	orders := c.V5().Order()
	for cat, symbol := range sdkSymbols {
		for _, byLink := range []bool{false, true} {
			o := ex.AddOrder(bybittest.Order{Category: string(cat), Symbol: symbol, OrderLinkID: fmt.Sprintf("hiro-%s-%v", cat, byLink), Qty: "3", CumExecQty: "1"})
			// Looked up while open, by id and in the open-orders list.
			open, err := orders.GetOpenOrders(hiro.V5GetOpenOrdersParam{Category: cat, OrderID: &o.OrderID})
			require.NoError(t, err, "%s", cat)
			require.Len(t, open.Result.List, 1)
			require.Equal(t, hiro.OrderStatusNew, open.Result.List[0].OrderStatus)
			require.Equal(t, "2", open.Result.List[0].LeavesQty)
			sym := hiro.SymbolV5(symbol)
			list, err := orders.GetOpenOrders(hiro.V5GetOpenOrdersParam{Category: cat, Symbol: &sym})
			require.NoError(t, err)
			require.NotEmpty(t, list.Result.List, "the open orders of %s", cat)

			p := hiro.V5CancelOrderParam{Category: cat, Symbol: sym}
			if byLink {
				p.OrderLinkID = &o.OrderLinkID
			} else {
				p.OrderID = &o.OrderID
			}
			res, err := orders.CancelOrder(p)
			require.NoError(t, err, "%s byLink=%v", cat, byLink)
			require.Equal(t, o.OrderID, res.Result.OrderID)
			require.Equal(t, o.OrderLinkID, res.Result.OrderLinkID)

			hist, err := orders.GetHistoryOrders(hiro.V5GetHistoryOrdersParam{Category: cat, OrderID: &o.OrderID})
			require.NoError(t, err)
			require.Len(t, hist.Result.List, 1)
			require.Equal(t, "0", hist.Result.List[0].LeavesQty, "nothing left of a cancelled order")
			require.Equal(t, "1", hist.Result.List[0].CumExecQty)
		}
	}

	// A second cancel of a cancelled order: Bybit's error, through the SDK's
	// error type.
	o := ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	_, err := orders.CancelOrder(hiro.V5CancelOrderParam{Category: hiro.CategoryV5Linear, Symbol: "BTCUSDT", OrderID: &o.OrderID})
	require.NoError(t, err)
	_, err = orders.CancelOrder(hiro.V5CancelOrderParam{Category: hiro.CategoryV5Linear, Symbol: "BTCUSDT", OrderID: &o.OrderID})
	var apiErr *hiro.ErrorResponse
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 110001, apiErr.RetCode)

	// Cancel-all: spot by its default filter and by tpslOrder; linear by
	// settleCoin.
	ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT"})
	ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT", Kind: "tpslOrder"})
	for _, f := range []*hiro.OrderFilter{nil, new(hiro.OrderFilterTpSlOrder)} {
		all, err := orders.CancelAllOrders(hiro.V5CancelAllOrdersParam{Category: hiro.CategoryV5Spot, OrderFilter: f})
		require.NoError(t, err)
		require.Len(t, all.Result.LinearInverseOption.List, 1)
		require.Equal(t, "1", all.Result.Spot.Success)
	}
	ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "ETHUSDT"})
	usdt := hiro.Coin("USDT")
	all, err := orders.CancelAllOrders(hiro.V5CancelAllOrdersParam{Category: hiro.CategoryV5Linear, SettleCoin: &usdt})
	require.NoError(t, err)
	require.Len(t, all.Result.LinearInverseOption.List, 1)

	key, err := c.V5().User().GetAPIKey()
	require.NoError(t, err)
	require.Equal(t, bybittest.DemoAPIKey, key.Result.APIKey)
	require.Equal(t, 0, key.Result.ReadOnly)
	require.Contains(t, key.Result.Permissions.ContractTrade, "Order")
	require.Equal(t, 1, key.Result.Uta)
	require.Equal(t, time.Unix(0, 0).UTC(), key.Result.ExpiredAt.UTC())
	require.False(t, key.Result.CreatedAt.IsZero())
}

func TestHirokisanSDKPrivateOrderStream(t *testing.T) {
	t.Parallel()
	ex, srv := newSDKSim(t)
	ws := hiro.NewWebsocketClient().WithBaseURL("ws"+strings.TrimPrefix(srv.URL, "http")).WithAuth(bybittest.DemoAPIKey, bybittest.DemoAPISecret)
	svc, err := ws.V5().Private()
	require.NoError(t, err)
	require.NoError(t, svc.Subscribe()) // auth
	updates := make(chan hiro.V5WebsocketPrivateOrderData, 16)
	_, err = svc.SubscribeOrder(func(r hiro.V5WebsocketPrivateOrderResponse) error {
		for _, d := range r.Data {
			updates <- d
		}
		return nil
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	started := make(chan error, 1)
	go func() {
		started <- svc.Start(ctx, func(closed bool, err error) {
			if !closed {
				errs <- err
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-started })
	require.Eventually(t, func() bool { return ex.PrivateSubscribers() == 1 }, 10*time.Second, 5*time.Millisecond)

	o := ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "hiro-ws"})
	rest := hiro.NewClient().WithBaseURL(srv.URL).WithAuth(bybittest.DemoAPIKey, bybittest.DemoAPISecret)
	_, err = rest.V5().Order().CancelOrder(hiro.V5CancelOrderParam{Category: hiro.CategoryV5Linear, Symbol: "BTCUSDT", OrderLinkID: &o.OrderLinkID})
	require.NoError(t, err)
	select {
	case d := <-updates:
		require.Equal(t, o.OrderID, d.OrderID)
		require.Equal(t, hiro.OrderStatusCancelled, d.OrderStatus)
		require.Equal(t, "linear", d.Category)
		require.Equal(t, "0", d.LeavesQty)
	case err := <-errs:
		t.Fatalf("the SDK could not read the stream: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no order update reached the SDK")
	}
}

func TestBybitOfficialSDKBatchTimeAndLookups(t *testing.T) {
	t.Parallel()
	ex, srv := newSDKSim(t)
	c := bybitapi.NewBybitHttpClient(bybittest.DemoAPIKey, bybittest.DemoAPISecret, bybitapi.WithBaseURL(srv.URL))
	ctx := context.Background()

	tm, err := c.NewUtaBybitServiceNoParams().GetServerTime(ctx)
	require.NoError(t, err)
	require.Zero(t, tm.RetCode)
	result, ok := tm.Result.(map[string]any)
	require.True(t, ok, "%T", tm.Result)
	require.NotEmpty(t, result["timeSecond"])
	require.NotEmpty(t, result["timeNano"])

	for cat, symbol := range sdkSymbols {
		var req []map[string]any
		var want []string
		for i := range 3 {
			o := ex.AddOrder(bybittest.Order{Category: string(cat), Symbol: symbol, OrderLinkID: fmt.Sprintf("official-%s-%d", cat, i)})
			item := map[string]any{"symbol": symbol}
			if i%2 == 0 {
				item["orderId"] = o.OrderID
			} else {
				item["orderLinkId"] = o.OrderLinkID
			}
			req = append(req, item)
			want = append(want, o.OrderID)
		}
		// One already gone: its own code in retExtInfo, the others cancelled.
		req = append(req, map[string]any{"symbol": symbol, "orderId": "no-such-order"})
		res, err := c.NewUtaBybitServiceWithParams(map[string]any{"category": string(cat), "request": req}).CancelBatchOrder(ctx)
		require.NoError(t, err, "%s", cat)
		require.Zero(t, res.RetCode, res.RetMsg)
		require.Len(t, res.Result.List, 4)
		require.Len(t, res.RetExtInfo.List, 4)
		for i, id := range want {
			require.Equal(t, id, res.Result.List[i].OrderId)
			require.Zero(t, res.RetExtInfo.List[i].Code)
		}
		require.NotZero(t, res.RetExtInfo.List[3].Code)

		// Single cancel, lookups and cancel-all through the same signer
		// (it sends X-BAPI-RECV-WINDOW).
		o := ex.AddOrder(bybittest.Order{Category: string(cat), Symbol: symbol})
		open, err := c.NewUtaBybitServiceWithParams(map[string]any{"category": string(cat), "orderId": o.OrderID}).GetOpenOrders(ctx)
		require.NoError(t, err)
		require.Zero(t, open.RetCode, open.RetMsg)
		one, err := c.NewUtaBybitServiceWithParams(map[string]any{"category": string(cat), "symbol": symbol, "orderId": o.OrderID}).CancelOrder(ctx)
		require.NoError(t, err)
		require.Zero(t, one.RetCode, one.RetMsg)
		hist, err := c.NewUtaBybitServiceWithParams(map[string]any{"category": string(cat), "orderId": o.OrderID}).GetOrderHistory(ctx)
		require.NoError(t, err)
		require.Zero(t, hist.RetCode, hist.RetMsg)
		list := hist.Result.(map[string]any)["list"].([]any)
		require.Len(t, list, 1)
		require.Equal(t, "Cancelled", list[0].(map[string]any)["orderStatus"])

		ex.AddOrder(bybittest.Order{Category: string(cat), Symbol: symbol})
		all, err := c.NewUtaBybitServiceWithParams(map[string]any{"category": string(cat), "symbol": symbol}).CancelAllOrders(ctx)
		require.NoError(t, err)
		require.Zero(t, all.RetCode, all.RetMsg)
		require.Len(t, all.Result.(map[string]any)["list"], 1)
	}

	key, err := c.NewUtaBybitServiceNoParams().GetAPIKeyInfo(ctx)
	require.NoError(t, err)
	require.Zero(t, key.RetCode, key.RetMsg)
	require.Equal(t, bybittest.DemoAPIKey, key.Result.(map[string]any)["apiKey"])
}
