package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
	s.publishCancels("crash", n)
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

// kill -9 between two calls of a cancel-all's repeat loop, then a restart:
// what the dead process's first call cancelled was stored as progress before
// the kill, so the restarted worker's result lists those 500 orders too. It
// cannot claim its list is whole: the dead process may have made a call it
// never recorded.
func TestKill9MidCancelAllKeepsItsProgress(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	s.env["NATS_ACK_WAIT"] = "2s" // how soon the dead process's message comes back
	// One request an hour: the first call goes, the second waits for the
	// IP budget, and the kill comes while it waits.
	s.env["BYBIT_IP_LIMIT"] = "1/1h"
	const n = 1203
	for range n {
		s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	}
	cmd, _ := s.startBinary()
	ack, err := s.js.Publish(context.Background(), "orders.cancel-all", []byte(`{"category":"linear","symbol":"BTCUSDT","requestId":"kill-crash"}`))
	require.NoError(t, err)
	progress := func() int {
		c := 0
		s.readAll([]string{fmt.Sprint("orders.cancel-all.progress.", ack.Sequence)}, func(jetstream.Msg) { c++ })
		return c
	}
	require.Eventually(t, func() bool { return progress() == 1 }, waitFor, 10*time.Millisecond)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.Empty(t, s.results())

	s.env["BYBIT_IP_LIMIT"] = "off"
	_, logs := s.startBinary()
	require.Eventually(t, func() bool { return len(s.results()) >= 1 }, waitFor, 20*time.Millisecond, "%s", logs)
	r := s.results()[0]
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	require.EqualValues(t, 2, r.Deliveries)
	listed := map[string]bool{}
	for _, o := range r.Orders {
		require.False(t, listed[o.OrderID], "listed once")
		listed[o.OrderID] = true
	}
	require.Len(t, listed, n, "the dead process's 500 and the restart's 703")
	for id := range listed {
		o, _ := s.ex.Order("linear", id)
		require.Equal(t, "Cancelled", o.Status)
	}
	require.NotNil(t, r.OrdersComplete)
	require.False(t, *r.OrdersComplete, "a crash leaves no word that every call was recorded")
}
