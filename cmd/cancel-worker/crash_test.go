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

// kill -9 mid-burst, then a restart: every request has exactly one result,
// and a request the dead process had sent without publishing its result ends
// cancelled or not_open, marked ambiguous.
func TestKill9MidBurstThenRestart(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{AutoCreate: true, Latency: 150 * time.Millisecond}, nil)
	s.env["NATS_ACK_WAIT"] = "2s" // how soon the dead process's messages come back
	s.env["CONFIRM_TIMEOUT"] = "1s"
	cmd, _ := s.startBinary()
	const n = 40
	for i := range n {
		_, err := s.js.Publish(context.Background(), "orders.cancel", []byte(fmt.Sprintf(`{"category":"linear","symbol":"BTCUSDT","orderId":"crash-%d"}`, i)))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return len(s.results()) >= 5 }, waitFor, 10*time.Millisecond)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()

	before := map[string]bool{}
	for _, r := range s.results() {
		before[r.OrderID] = true
	}
	sentByDead := map[string]bool{}
	for _, q := range s.ex.Requests() {
		if q.OrderID != "" && !before[q.OrderID] {
			sentByDead[q.OrderID] = true
		}
	}
	require.Less(t, len(before), n, "the kill came mid-burst")

	_, logs := s.startBinary()
	require.Eventually(t, func() bool { return len(s.results()) >= n }, waitFor, 20*time.Millisecond, "%s", logs)
	perSeq := map[uint64]int{}
	for _, r := range s.results() {
		perSeq[r.RequestSeq]++
		require.Contains(t, []messages.Status{messages.StatusCancelled, messages.StatusNotOpen}, r.Status, "%+v", r)
		if sentByDead[r.OrderID] {
			require.True(t, r.Ambiguous, "sent by the dead process: %+v", r)
		}
		if r.Status == messages.StatusNotOpen {
			// Only a cancel the dead process had already applied can be
			// not open, and then the result must say it may be so.
			require.True(t, r.Ambiguous, "%+v", r)
		}
	}
	require.Len(t, perSeq, n)
	for seq, c := range perSeq {
		require.Equal(t, 1, c, "request %d", seq)
	}
	for i := range n {
		o, ok := s.ex.Order("linear", fmt.Sprint("crash-", i))
		require.True(t, ok)
		require.Equal(t, "Cancelled", o.Status)
	}

	// Every result (cancelled, or not_open and ambiguous) gets exactly one
	// confirmation, though the killed process held some of them.
	var confs map[string][]messages.Confirmation
	require.Eventually(t, func() bool { confs = s.confirmations(); return len(confs) >= n }, waitFor, 20*time.Millisecond, "%s", logs)
	for _, r := range s.results() {
		c := confs[messages.ConfirmedMsgID(r.RequestSeq, r.OrderID, "")]
		require.Len(t, c, 1, "request %d", r.RequestSeq)
		require.Equal(t, "Cancelled", c[0].OrderStatus)
	}
	require.Len(t, confs, n)
}
