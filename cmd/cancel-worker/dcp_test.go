package main

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

// Two `cancel-worker run` processes arm the dead-man switch; both are
// killed (-9): once the window passes, Bybit (the simulator) cancels every
// order of the account.
func TestDCPTwoKilledReplicasLetBybitCancelEverything(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	fired := map[string]int{}
	s := newStack(t, bybittest.Options{DCPSecond: 10 * time.Millisecond, OnDCP: func(ev bybittest.DCPEvent) {
		if ev.Kind == "fired" {
			mu.Lock()
			fired[ev.Product] = ev.Cancelled
			mu.Unlock()
		}
	}}, nil)
	s.env["BYBIT_DCP_WINDOW"] = "3s"
	spot := s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Kind: "StopOrder"})
	lin := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	opt := s.ex.AddOrder(bybittest.Order{Category: "option", Symbol: "BTC-27MAR26-100000-C"})
	a, logsA := s.startBinary()
	b, _ := s.startBinary()
	require.Contains(t, logsA.String(), "dead-man switch armed")
	require.Eventually(t, func() bool { return s.ex.DCPSubscribers("demo", "SPOT") == 2 }, waitFor, 5*time.Millisecond)
	require.NoError(t, a.Process.Kill())
	require.NoError(t, b.Process.Kill())
	_ = a.Wait()
	_ = b.Wait()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(fired) == 3
	}, waitFor, 5*time.Millisecond)
	for _, o := range []bybittest.Order{spot, lin, opt} {
		st, _ := s.ex.Order(o.Category, o.OrderID)
		require.Equal(t, "CancelByDCP", st.CancelType, o.Category)
	}
}

// An account of the accounts file arms its own switch: its window is set
// for its UID, and its private stream subscribes the dcp topics.
func TestDCPWindowPerAccountFromTheAccountsFile(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{Accounts: []bybittest.Account{
		{APIKey: bybittest.DemoAPIKey, Secret: bybittest.DemoAPISecret, UID: "main"},
		{APIKey: "hedge-key", Secret: "hedge-inline-secret", UID: "hedge"},
	}}, nil)
	s.env["BYBIT_ACCOUNTS_FILE"] = writeFileIn(t, t.TempDir(), "accounts.yaml", `
accounts:
  hedge:
    apiKey: hedge-key
    apiSecret: hedge-inline-secret
    dcpWindow: 45s
`)
	_, logs := s.startBinary()
	require.Eventually(t, func() bool { return s.ex.DCPSubscribers("hedge", "DERIVATIVES") == 1 }, waitFor, 5*time.Millisecond, "%s", logs)
	for _, p := range []string{"DERIVATIVES", "SPOT", "OPTIONS"} {
		require.Equal(t, 45, s.ex.DCPWindow("hedge", p))
	}
	require.Zero(t, s.ex.DCPSubscribers("main", "DERIVATIVES"), "the default account does not arm it")
	require.Contains(t, logs.String(), "dead-man switch armed")
}
