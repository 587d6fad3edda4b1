package bybit_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

func wsURL(f fixture) string { return "ws" + strings.TrimPrefix(f.srv.URL, "http") + "/v5/private" }

// updates collects what an order stream delivers.
type updates struct {
	mu     sync.Mutex
	orders []bybit.Order
	states []bool
	errs   []error
}

func (u *updates) opts(url string) bybit.OrderStreamOptions {
	return bybit.OrderStreamOptions{
		URL: url,
		OnOrders: func(o []bybit.Order) {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.orders = append(u.orders, o...)
		},
		OnState: func(up bool, err error) {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.states = append(u.states, up)
			if err != nil {
				u.errs = append(u.errs, err)
			}
		},
	}
}

func (u *updates) statusOf(orderID string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := ""
	for _, o := range u.orders {
		if o.OrderID == orderID {
			s = o.OrderStatus
		}
	}
	return s
}

func (u *updates) ups() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, up := range u.states {
		if up {
			n++
		}
	}
	return n
}

// run starts the stream until the test ends; stop ends it sooner and waits
// until its Run returned.
func run(t *testing.T, s *bybit.OrderStream) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func TestOrderStreamPushesUpdatesAndReconnectsAfterADrop(t *testing.T) {
	t.Parallel()
	f := setup(t, bybittest.Options{}, 5*time.Second)
	var u updates
	run(t, f.client.OrderStream(u.opts(wsURL(f))))
	require.Eventually(t, func() bool { return f.ex.PrivateSubscribers() == 1 }, 10*time.Second, 5*time.Millisecond)

	o := f.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	_, err := f.client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: o.OrderID})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return u.statusOf(o.OrderID) == "Cancelled" }, 10*time.Second, 5*time.Millisecond)

	f.ex.DropPrivateConnections()
	require.Eventually(t, func() bool { return u.ups() == 2 && f.ex.PrivateSubscribers() == 1 }, 10*time.Second, 5*time.Millisecond,
		"re-authenticated and re-subscribed")
	require.Equal(t, 2, f.ex.PrivateAuths())
	filled := f.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT", FillOnCancel: true})
	_, err = f.client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "spot", Symbol: "ETHUSDT", OrderID: filled.OrderID})
	require.NoError(t, err, "Bybit accepts the cancel of an order that fills first")
	require.Eventually(t, func() bool { return u.statusOf(filled.OrderID) == "Filled" }, 10*time.Second, 5*time.Millisecond)
}

func TestOrderStreamAuthRefusalIsClearAndKeepsNoSecret(t *testing.T) {
	t.Parallel()
	f := setup(t, bybittest.Options{}, 5*time.Second)
	const secret = "wrong-secret-0123456789"
	bad, err := bybit.NewClient(bybit.Options{BaseURL: f.srv.URL, APIKey: bybittest.DemoAPIKey, APISecret: secret})
	require.NoError(t, err)
	var u updates
	err = bad.OrderStream(u.opts(wsURL(f))).Check(context.Background())
	require.True(t, bybit.IsAuthError(err), "%v", err)
	require.Contains(t, err.Error(), "Signature verification failed")
	require.NotContains(t, err.Error(), secret)

	unknown, err := bybit.NewClient(bybit.Options{BaseURL: f.srv.URL, APIKey: "nobody", APISecret: secret})
	require.NoError(t, err)
	err = unknown.OrderStream(u.opts(wsURL(f))).Check(context.Background())
	require.ErrorContains(t, err, "Invalid apikey")

	require.NoError(t, f.client.OrderStream(u.opts(wsURL(f))).Check(context.Background()))
}

func TestOrderStreamWithAnRSAKey(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	f := setup(t, bybittest.Options{Accounts: []bybittest.Account{{APIKey: "rsa-key", RSAPublicKey: &key.PublicKey}}}, 5*time.Second)
	c, err := bybit.NewClient(bybit.Options{BaseURL: f.srv.URL, APIKey: "rsa-key", RSAPrivateKey: key})
	require.NoError(t, err)
	var u updates
	require.NoError(t, c.OrderStream(u.opts(wsURL(f))).Check(context.Background()))
}

func TestOrderLookupsRealtimeThenHistory(t *testing.T) {
	t.Parallel()
	f := setup(t, bybittest.Options{}, 5*time.Second)
	ctx := context.Background()
	open := f.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "l-open"})
	res, err := f.client.OpenOrRecentOrder(ctx, bybit.OrderQuery{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "l-open"})
	require.NoError(t, err)
	require.True(t, res.Found)
	require.True(t, res.RateLimit.Known)
	require.Equal(t, 50, res.RateLimit.Limit, "the lookups' own limit, from the headers")
	got := res.Order
	require.Equal(t, open.OrderID, got.OrderID)
	require.Equal(t, "New", got.OrderStatus)
	require.False(t, bybit.FinalStatus(got.OrderStatus))
	require.Positive(t, int64(got.UpdatedTime))

	old := f.ex.AddOrder(bybittest.Order{Category: "inverse", Symbol: "BTCUSD", Status: "Cancelled", NotRecent: true})
	res, err = f.client.OpenOrRecentOrder(ctx, bybit.OrderQuery{Category: "inverse", Symbol: "BTCUSD", OrderID: old.OrderID})
	require.NoError(t, err)
	require.False(t, res.Found)
	res, err = f.client.HistoricOrder(ctx, bybit.OrderQuery{Category: "inverse", Symbol: "BTCUSD", OrderID: old.OrderID})
	require.NoError(t, err)
	require.True(t, res.Found)
	got = res.Order
	require.Equal(t, "Cancelled", got.OrderStatus)
	require.True(t, bybit.FinalStatus(got.OrderStatus))

	res, err = f.client.HistoricOrder(ctx, bybit.OrderQuery{Category: "inverse", Symbol: "BTCUSD", OrderID: "never-was"})
	require.NoError(t, err)
	require.False(t, res.Found)

	bad, err := bybit.NewClient(bybit.Options{BaseURL: f.srv.URL, APIKey: bybittest.DemoAPIKey, APISecret: "wrong"})
	require.NoError(t, err)
	_, err = bad.OpenOrRecentOrder(ctx, bybit.OrderQuery{Category: "linear", Symbol: "BTCUSDT", OrderID: open.OrderID})
	require.ErrorContains(t, err, "10004", "the query string is what is signed, and the simulator checks it")
}
