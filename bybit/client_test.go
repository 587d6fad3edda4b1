package bybit_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

type fixture struct {
	ex     *bybittest.Exchange
	srv    *httptest.Server
	client *bybit.Client
}

func setup(t *testing.T, o bybittest.Options, timeout time.Duration) fixture {
	t.Helper()
	ex := bybittest.New(o)
	srv := httptest.NewServer(ex)
	t.Cleanup(srv.Close)
	client, err := bybit.NewClient(bybit.Options{
		BaseURL: srv.URL, APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret, Timeout: timeout,
	})
	require.NoError(t, err)
	return fixture{ex: ex, srv: srv, client: client}
}

func TestCancelOrderIsSignedAndAccepted(t *testing.T) {
	t.Parallel()
	f := setup(t, bybittest.Options{}, 5*time.Second)
	o := f.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "link-1"})
	res, err := f.client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "link-1"})
	require.NoError(t, err)
	require.Equal(t, o.OrderID, res.OrderID)
	require.Equal(t, "link-1", res.OrderLinkID)
	require.True(t, res.RateLimit.Known)
	require.Equal(t, 10, res.RateLimit.Limit)
	require.Equal(t, 9, res.RateLimit.Remaining)
	got, _ := f.ex.Order("linear", o.OrderID)
	require.Equal(t, "Cancelled", got.Status)

	_, err = f.client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "link-1"})
	require.Equal(t, bybit.ClassNotOpen, bybit.ClassOf(err))
}

func TestWrongSecretIsRejectedBySignature(t *testing.T) {
	t.Parallel()
	f := setup(t, bybittest.Options{}, 5*time.Second)
	bad, err := bybit.NewClient(bybit.Options{BaseURL: f.srv.URL, APIKey: bybittest.DemoAPIKey, APISecret: "wrong"})
	require.NoError(t, err)
	_, err = bad.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "spot", Symbol: "BTCUSDT", OrderID: "1"})
	var apiErr *bybit.APIError
	require.True(t, errors.As(err, &apiErr))
	require.Equal(t, 10004, apiErr.RetCode)
	require.NotContains(t, err.Error(), "wrong")
}

func TestClockSyncFollowsTheExchange(t *testing.T) {
	t.Parallel()
	for _, skew := range []time.Duration{20 * time.Second, -20 * time.Second} {
		f := setup(t, bybittest.Options{ClockOffset: skew}, 5*time.Second)
		f.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-1"})
		_, err := f.client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-1"})
		require.Equal(t, bybit.ClassClockSkew, bybit.ClassOf(err), "skew %v", skew)
		off, err := f.client.SyncClock(context.Background())
		require.NoError(t, err)
		require.InDelta(t, skew.Seconds(), off.Seconds(), 1)
		_, err = f.client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-1"})
		require.NoError(t, err)
	}
}

func TestTransportErrorsSayWhetherTheRequestWasWritten(t *testing.T) {
	t.Parallel()
	f := setup(t, bybittest.Options{}, 300*time.Millisecond)
	req := bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-1"}

	f.ex.InjectFault(bybittest.Fault{Delay: time.Minute})
	_, err := f.client.CancelOrder(context.Background(), req)
	var trErr *bybit.TransportError
	require.True(t, errors.As(err, &trErr), "%v", err)
	require.True(t, trErr.Written)
	require.True(t, bybit.MayHaveApplied(err))
	require.Equal(t, bybit.ClassTransient, bybit.ClassOf(err))

	f.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-1"})
	f.ex.InjectFault(bybittest.Fault{Apply: true, Hangup: true})
	_, err = f.client.CancelOrder(context.Background(), req)
	require.True(t, errors.As(err, &trErr), "%v", err)
	require.True(t, trErr.Written)
	got, _ := f.ex.Order("linear", "o-1")
	require.Equal(t, "Cancelled", got.Status, "the lost answer's cancel was applied")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	refused, err := bybit.NewClient(bybit.Options{BaseURL: "http://" + addr, APIKey: "k", APISecret: "s"})
	require.NoError(t, err)
	_, err = refused.CancelOrder(context.Background(), req)
	require.True(t, errors.As(err, &trErr), "%v", err)
	require.False(t, trErr.Written)
	require.False(t, bybit.MayHaveApplied(err))
}

func TestQueryAPIKey(t *testing.T) {
	t.Parallel()
	f := setup(t, bybittest.Options{Accounts: []bybittest.Account{
		{APIKey: bybittest.DemoAPIKey, Secret: bybittest.DemoAPISecret},
		{APIKey: "ro", Secret: "ro-secret", ReadOnly: true},
	}}, 5*time.Second)
	info, err := f.client.QueryAPIKey(context.Background())
	require.NoError(t, err)
	ok, markets := info.CanTrade()
	require.True(t, ok)
	require.Contains(t, markets, "spot")

	ro, err := bybit.NewClient(bybit.Options{BaseURL: f.srv.URL, APIKey: "ro", APISecret: "ro-secret"})
	require.NoError(t, err)
	info, err = ro.QueryAPIKey(context.Background())
	require.NoError(t, err)
	ok, _ = info.CanTrade()
	require.False(t, ok)

	other, err := bybit.NewClient(bybit.Options{BaseURL: f.srv.URL, APIKey: "mainnet-key", APISecret: "x"})
	require.NoError(t, err)
	_, err = other.QueryAPIKey(context.Background())
	var apiErr *bybit.APIError
	require.True(t, errors.As(err, &apiErr))
	require.Equal(t, 10003, apiErr.RetCode)
}

func TestBaseURLFor(t *testing.T) {
	t.Parallel()
	for env, want := range map[string]string{"mainnet": bybit.MainnetURL, "testnet": bybit.TestnetURL, "demo": bybit.DemoURL} {
		got, err := bybit.BaseURLFor(env)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	_, err := bybit.BaseURLFor("prod")
	require.Error(t, err)
	_, err = bybit.NewClient(bybit.Options{BaseURL: "api.bybit.com"})
	require.Error(t, err)
}

// Bybit answers expiredAt "1970-01-01T00:00:00Z" for a key that never
// expires (docs/v5/user/apikey-info.mdx's example, a key bound to IPs).
func TestQueryAPIKeyThatNeverExpires(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"retCode":0,"retMsg":"","result":{"id":"2208369","apiKey":"k","readOnly":0,"secret":"",` +
			`"permissions":{"ContractTrade":["Order","Position"],"Spot":["SpotTrade"]},"ips":["18.181.170.164"],"type":1,` +
			`"deadlineDay":-2,"expiredAt":"1970-01-01T00:00:00Z","createdAt":"2025-10-13T03:20:45Z","unified":0,"uta":1},"retExtInfo":{},"time":1776149990532}`))
	}))
	t.Cleanup(srv.Close)
	c, err := bybit.NewClient(bybit.Options{BaseURL: srv.URL, APIKey: "k", APISecret: "s"})
	require.NoError(t, err)
	info, err := c.QueryAPIKey(context.Background())
	require.NoError(t, err)
	require.True(t, info.ExpiresAt.IsZero(), "never expires, not %v", info.ExpiresAt)

	f := setup(t, bybittest.Options{Accounts: []bybittest.Account{
		{APIKey: bybittest.DemoAPIKey, Secret: bybittest.DemoAPISecret, ExpiresAt: time.Now().Add(72 * time.Hour).Truncate(time.Second)},
	}}, 5*time.Second)
	info, err = f.client.QueryAPIKey(context.Background())
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(72*time.Hour), info.ExpiresAt, time.Minute)
}
