package bybit_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

func TestDCPWindowIsSetPerProductAndReadBack(t *testing.T) {
	t.Parallel()
	f := setup(t, bybittest.Options{}, time.Second)
	for i, p := range bybit.DCPProducts {
		_, err := f.client.SetDCP(t.Context(), p, 20+i)
		require.NoError(t, err)
	}
	infos, err := f.client.DCPInfos(t.Context())
	require.NoError(t, err)
	got := map[string]bybit.DCPInfo{}
	for _, d := range infos {
		got[d.Product] = d
	}
	require.Equal(t, bybit.DCPInfo{Product: "DERIVATIVES", Status: "ON", WindowSeconds: 20}, got["DERIVATIVES"])
	require.Equal(t, bybit.DCPInfo{Product: "SPOT", Status: "ON", WindowSeconds: 21}, got["SPOT"])
	require.Equal(t, bybit.DCPInfo{Product: "OPTIONS", Status: "ON", WindowSeconds: 22}, got["OPTIONS"])

	_, err = f.client.SetDCP(t.Context(), bybit.DCPSpot, 2)
	require.ErrorContains(t, err, "outside [3, 300]", "checked before it is sent")
}

// The stream subscribes the DCP topics on every connection, also after a
// drop: the simulator's countdown starts when the connection goes and stops
// when it is back.
func TestOrderStreamKeepsTheDCPTopicsThroughReconnects(t *testing.T) {
	t.Parallel()
	events := make(chan bybittest.DCPEvent, 16)
	f := setup(t, bybittest.Options{OnDCP: func(e bybittest.DCPEvent) { events <- e }}, time.Second)
	var u updates
	o := u.opts(wsURL(f))
	o.Topics = []string{bybit.DCPTopic(bybit.DCPDerivatives)}
	run(t, f.client.OrderStream(o))
	require.Eventually(t, func() bool { return f.ex.DCPSubscribers("demo", "DERIVATIVES") == 1 }, 5*time.Second, 5*time.Millisecond)
	f.ex.DropPrivateConnections()
	require.Equal(t, "countdown", (<-events).Kind)
	require.Equal(t, "stopped", (<-events).Kind, "re-subscribed inside the window")
	require.Equal(t, 1, f.ex.DCPSubscribers("demo", "DERIVATIVES"))
	require.Zero(t, f.ex.DCPCountdowns())
}

func TestOpenOrdersPagesThroughEveryOpenOrder(t *testing.T) {
	t.Parallel()
	f := setup(t, bybittest.Options{}, time.Second)
	for i := range 120 {
		f.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", OrderLinkID: fmt.Sprint("o-", i), Kind: []string{"Order", "tpslOrder", "StopOrder"}[i%3]})
	}
	seen := map[string]bool{}
	cursor, pages := "", 0
	for {
		p, err := f.client.OpenOrders(t.Context(), bybit.OpenOrdersQuery{Category: "spot", Cursor: cursor})
		require.NoError(t, err)
		pages++
		for _, o := range p.Orders {
			require.False(t, seen[o.OrderID])
			seen[o.OrderID] = true
		}
		if cursor = p.NextPageCursor; cursor == "" {
			break
		}
	}
	require.Len(t, seen, 120, "every kind: no orderFilter lists them all")
	require.Equal(t, 3, pages)
	p, err := f.client.OpenOrders(t.Context(), bybit.OpenOrdersQuery{Category: "spot", OrderFilter: "tpslOrder"})
	require.NoError(t, err)
	require.Len(t, p.Orders, 40)
	require.Equal(t, "tpslOrder", p.Orders[0].StopOrderType)
}

// The countdown is per UID and product: when the last connection of one
// UID subscribed to dcp.spot goes, only that UID's spot orders are
// cancelled once the window passes.
func TestSimulatedDCPCancelsOnlyTheProductOfTheUIDWhoseConnectionsAreGone(t *testing.T) {
	t.Parallel()
	fired := make(chan bybittest.DCPEvent, 4)
	f := setup(t, bybittest.Options{DCPSecond: time.Millisecond, Accounts: []bybittest.Account{
		{APIKey: bybittest.DemoAPIKey, Secret: bybittest.DemoAPISecret, UID: "a"},
		{APIKey: "other", Secret: "other-secret", UID: "b"},
	}, OnDCP: func(e bybittest.DCPEvent) {
		if e.Kind == "fired" {
			fired <- e
		}
	}}, time.Second)
	mine := f.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", UID: "a"})
	myLinear := f.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", UID: "a"})
	theirs := f.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", UID: "b"})
	_, err := f.client.SetDCP(t.Context(), bybit.DCPSpot, 3)
	require.NoError(t, err)

	var u updates
	o := u.opts(wsURL(f))
	o.Topics = []string{bybit.DCPTopic(bybit.DCPSpot)}
	stop := run(t, f.client.OrderStream(o))
	require.Eventually(t, func() bool { return f.ex.DCPSubscribers("a", "SPOT") == 1 }, 5*time.Second, 5*time.Millisecond)
	stop()
	ev := <-fired
	require.Equal(t, bybittest.DCPEvent{UID: "a", Product: "SPOT", Kind: "fired", Cancelled: 1}, ev)
	st, _ := f.ex.Order("spot", mine.OrderID)
	require.Equal(t, "CancelByDCP", st.CancelType)
	st, _ = f.ex.Order("linear", myLinear.OrderID)
	require.Equal(t, "New", st.Status, "DERIVATIVES had no subscribed connection: no countdown")
	st, _ = f.ex.Order("spot", theirs.OrderID)
	require.Equal(t, "New", st.Status, "another UID's orders")
}
