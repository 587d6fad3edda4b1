package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

// runWorkerInBackground runs `cancel-worker run` in-process until the test
// ends.
func (s *stack) runWorkerInBackground() {
	s.t.Helper()
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, envFunc(s.env), &logs, &logs) }()
	require.Eventually(s.t, func() bool { return bytes.Contains([]byte(logs.String()), []byte("worker started")) }, waitFor, 10*time.Millisecond, "%s", &logs)
	s.t.Cleanup(func() { cancel(); require.NoError(s.t, <-done) })
}

func (s *stack) flattenCmd(args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err := run(ctx, append([]string{"flatten"}, args...), envFunc(s.env), &out, &errOut)
	return out.String(), errOut.String(), err
}

func TestFlattenCommandExitsZeroOnlyWhenNothingIsLeft(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Kind: "tpslOrder"})
	s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "ETHPERP", SettleCoin: "USDC"})
	s.ex.AddOrder(bybittest.Order{Category: "inverse", Symbol: "ETHUSD"})
	s.runWorkerInBackground()

	out, errOut, err := s.flattenCmd("--request-id", "incident-1")
	require.NoError(t, err, "%s\n%s", out, errOut)
	require.Contains(t, errOut, `flatten of account "default" sent as incident-1 through the sync service`)
	require.Contains(t, out, "status cancelled, complete true, 3 orders cancelled")
	require.Contains(t, out, "inverse  1 cancelled")
	require.Contains(t, out, "nothing left open")

	// The same request id again: no second flatten, the first one's result.
	_, errOut, err = s.flattenCmd("--request-id", "incident-1")
	require.NoError(t, err)
	require.Contains(t, errOut, "already in the stream")

	quote := s.ex.AddOrder(bybittest.Order{Category: "option", Symbol: "BTC-27MAR26-100000-C", Respawn: true})
	out, _, err = s.flattenCmd()
	require.ErrorContains(t, err, "flatten not complete (failed)")
	require.Contains(t, out, "left open:")
	require.Contains(t, out, "option")
	require.NotContains(t, out, quote.OrderID, "the quote left is a new one")
	require.Equal(t, exitRejected, exitCode(err))
}

// Without the sync service the request goes on the cancel-all subject and
// the result is read back by its stream sequence.
func TestFlattenCommandWithoutTheSyncServiceWaitsOnTheResultSubjects(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	s.env["NATS_SYNC_CANCEL_ALL_SUBJECT"] = ""
	s.env["NATS_SYNC_CANCEL_SUBJECT"] = ""
	s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Kind: "StopOrder"})
	s.runWorkerInBackground()
	out, errOut, err := s.flattenCmd("--account", "", "--request-id", "incident-2")
	require.NoError(t, err, "%s\n%s", out, errOut)
	require.Contains(t, errOut, "published as incident-2")
	require.Contains(t, out, "spot     1 cancelled")
}

// A flatten that outlasts the service's SYNC_MAX_TIMEOUT: the service
// answers 504 with the request's sequence, and the command goes on waiting
// for the result on the result subjects.
func TestFlattenCommandWaitsPastTheServicesTimeoutCap(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{Latency: 20 * time.Millisecond}, nil)
	s.env["SYNC_MAX_TIMEOUT"] = "100ms"
	s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Kind: "OcoOrder"})
	s.ex.AddOrder(bybittest.Order{Category: "inverse", Symbol: "BTCUSD"})
	s.runWorkerInBackground()
	out, errOut, err := s.flattenCmd("--request-id", "incident-3")
	require.NoError(t, err, "%s\n%s", out, errOut)
	require.Contains(t, errOut, "still running past the service's wait")
	require.Contains(t, out, "status cancelled, complete true, 2 orders cancelled")
}
