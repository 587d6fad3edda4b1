package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

func TestAccountsFileRoutesEachRequestToItsKey(t *testing.T) {
	t.Parallel()
	const hedgeSecret = "hedge-secret-from-a-file-0123456789"
	s := newStack(t, bybittest.Options{AutoCreate: true, Accounts: []bybittest.Account{
		{APIKey: bybittest.DemoAPIKey, Secret: bybittest.DemoAPISecret, UID: "main"},
		{APIKey: "hedge-key", Secret: hedgeSecret, UID: "hedge"},
		{APIKey: "arb-key", Secret: "arb-inline-secret", UID: "arb"},
	}}, nil)
	dir := t.TempDir()
	writeFileIn(t, dir, "hedge.secret", hedgeSecret+"\n")
	s.env["BYBIT_ACCOUNTS_FILE"] = writeFileIn(t, dir, "accounts.yaml", fmt.Sprintf(`
accounts:
  hedge:
    apiKey: hedge-key
    apiSecretFile: hedge.secret
    limits: {cancel/linear: 5}
  arb:
    apiKey: arb-key
    apiSecret: arb-inline-secret
    baseUrl: %s
    limitGroup: arb-uid
`, s.url))
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, envFunc(s.env), &logs, &logs) }()
	publish := func(body string) {
		require.Eventually(t, func() bool {
			_, err := s.js.Publish(context.Background(), "orders.cancel", []byte(body))
			return err == nil
		}, waitFor, 20*time.Millisecond)
	}
	publish(`{"category":"linear","symbol":"BTCUSDT","orderId":"for-default"}`)
	publish(`{"category":"linear","symbol":"BTCUSDT","orderId":"for-hedge","account":"hedge"}`)
	publish(`{"category":"spot","symbol":"BTCUSDT","orderId":"for-arb","account":"arb"}`)
	publish(`{"category":"spot","symbol":"BTCUSDT","orderId":"for-nobody","account":"nobody"}`)
	require.Eventually(t, func() bool { return len(s.results()) == 4 }, waitFor, 20*time.Millisecond, "%s", &logs)
	cancel()
	require.NoError(t, <-done)

	keyOf := map[string]string{}
	for _, q := range s.ex.Requests() {
		if q.Path == "/v5/order/cancel" {
			keyOf[q.OrderID] = q.APIKey
		}
	}
	require.Equal(t, map[string]string{"for-default": bybittest.DemoAPIKey, "for-hedge": "hedge-key", "for-arb": "arb-key"}, keyOf)
	for _, r := range s.results() {
		switch r.OrderID {
		case "":
			require.Equal(t, messages.StatusInvalid, r.Status)
			require.Contains(t, r.Error, `unknown account "nobody"`)
		default:
			require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
		}
	}
	require.Contains(t, logs.String(), "account=hedge", "the start-up key check runs per account")
	require.NotContains(t, logs.String(), hedgeSecret)
	require.NotContains(t, logs.String(), "arb-inline-secret")
}

func TestAccountsFileWebSocketURLs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFileIn(t, dir, "accounts.yaml", `accounts:
  own:
    apiKey: k1
    apiSecret: s1
    wsUrl: wss://stream.example/v5/private
  sim:
    apiKey: k2
    apiSecret: s2
    baseUrl: http://127.0.0.1:8080
  preset:
    apiKey: k3
    apiSecret: s3
    baseUrl: https://api.bybit.com
  plain:
    apiKey: k4
    apiSecret: s4
`)
	accts, err := readAccountsFile(file, "https://api-testnet.bybit.com", "wss://stream-testnet.bybit.com/v5/private", true)
	require.NoError(t, err)
	require.Equal(t, "wss://stream.example/v5/private", accts["own"].wsURL)
	require.Equal(t, "ws://127.0.0.1:8080/v5/private", accts["sim"].wsURL)
	require.Equal(t, "wss://stream.bybit.com/v5/private", accts["preset"].wsURL)
	require.Equal(t, "wss://stream-testnet.bybit.com/v5/private", accts["plain"].wsURL)
}

func TestAccountsFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	base := map[string]string{"BYBIT_API_KEY": "k", "BYBIT_API_SECRET": testSecret}
	for name, tc := range map[string]struct{ file, want string }{
		"unknown field":   {"accounts:\n  a:\n    apiKey: k\n    apiSecret: s\n    secret: oops-inline-value\n", "field secret not found"},
		"two secrets":     {"accounts:\n  a:\n    apiKey: k\n    apiSecret: s\n    rsaPrivateKeyFile: x.pem\n", "exactly one of"},
		"no key":          {"accounts:\n  a:\n    apiSecret: s\n", "apiKey is required"},
		"default twice":   {"accounts:\n  default:\n    apiKey: k\n    apiSecret: s\n", `account "default" is also given`},
		"empty":           {"accounts: {}\n", "has no accounts"},
		"bad limit":       {"accounts:\n  a:\n    apiKey: k\n    apiSecret: s\n    limits: {cancel/perp: 3}\n", "limits"},
		"json works too":  {`{"accounts": {"a": {"apiKey": "k", "apiSecretFile": "missing.secret"}}}`, "cannot read apiSecretFile"},
		"bad type hidden": {"accounts:\n  a:\n    apiKey: [k]\n    apiSecret: super-hidden-secret\n", "BYBIT_ACCOUNTS_FILE"},
		"bad ws url":      {"accounts:\n  a:\n    apiKey: k\n    apiSecret: s\n    wsUrl: https://stream.bybit.com\n", "wsUrl \"https://stream.bybit.com\" must start with ws:// or wss://"},
	} {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		env["BYBIT_ACCOUNTS_FILE"] = writeFileIn(t, dir, name+".yaml", tc.file)
		err := run(context.Background(), nil, envFunc(env), &syncBuffer{}, &syncBuffer{})
		require.ErrorContains(t, err, tc.want, name)
		require.NotContains(t, err.Error(), "oops-inline-value")
		require.NotContains(t, err.Error(), "super-hidden-secret")
	}
}
