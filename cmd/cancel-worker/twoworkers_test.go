package main

import (
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// Two worker processes share the durable consumer; one is killed with SIGKILL
// mid-burst. Every request still gets exactly one result: the messages the
// killed process held come back to the survivor (as redeliveries, answered
// ambiguous), and the survivor saw no redelivery while both were alive.
func TestTwoWorkersOneKilledMidBurst(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{AutoCreate: true, Latency: 50 * time.Millisecond}, nil)
	s.env["NATS_ACK_WAIT"] = "2s"
	s.env["BYBIT_LIMIT_SHARE"] = "0.5"
	s.env["HTTP_ADDR"] = "127.0.0.1:0"
	start := func() (*exec.Cmd, *syncBuffer, string) {
		cmd, logs := s.startBinary()
		m := httpAddrRe.FindStringSubmatch(logs.String())
		require.NotNil(t, m, "%s", logs)
		return cmd, logs, "http://" + m[1]
	}
	victim, _, victimURL := start()
	_, survivorLogs, survivorURL := start()

	const n = 120
	s.publishCancels("two", n)
	require.Eventually(t, func() bool { return len(s.results()) >= 20 }, waitFor, 10*time.Millisecond)
	alive := scrape(t, survivorURL)
	require.Zero(t, value(alive, "cancel_worker_redeliveries_total", nil), "no redelivery while both were alive")
	victimMetrics := scrape(t, victimURL)
	require.Positive(t, value(victimMetrics, "cancel_worker_messages_received_total", nil), "the victim had taken a share of the burst")
	require.NoError(t, victim.Process.Kill())
	_ = victim.Wait()

	require.Eventually(t, func() bool { return len(s.results()) >= n }, waitFor, 20*time.Millisecond, "%s", survivorLogs)
	perSeq := map[uint64]int{}
	redelivered := 0
	for _, r := range s.results() {
		perSeq[r.RequestSeq]++
		require.Contains(t, []messages.Status{messages.StatusCancelled, messages.StatusNotOpen}, r.Status, "%+v", r)
		if r.Deliveries > 1 {
			redelivered++
			require.True(t, r.Ambiguous, "%+v", r)
		}
	}
	require.Len(t, perSeq, n)
	for seq, c := range perSeq {
		require.Equal(t, 1, c, "request %d: exactly one result", seq)
	}
	after := scrape(t, survivorURL)
	require.Positive(t, redelivered, "the killed process's messages came back")
	require.EqualValues(t, redelivered, value(after, "cancel_worker_redeliveries_total", nil), "every redelivery went to the survivor and was answered once")
}
