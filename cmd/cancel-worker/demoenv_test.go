package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// BYBIT_ENV=demo end to end against the simulator's demo mode, which refuses
// what Bybit's demo trading refuses (no key check; cancel-batch for linear
// and option only): the worker starts, cancels in every category (batches
// where offered, single cancels where not), confirms, and is ready.
func TestBybitEnvDemoWorksEndToEnd(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{Demo: true}, nil)
	s.env["BYBIT_ENV"] = "demo" // BYBIT_BASE_URL points it at the simulator
	s.env["BYBIT_LIMITS"] = "cancel/linear=2,cancel/spot=2,cancel/inverse=2,cancel/option=2"
	base, logs, stop := startWorker(t, s.env)
	const perCategory = 6
	for _, cat := range messages.Categories {
		for i := range perCategory {
			o := s.ex.AddOrder(bybittest.Order{Category: cat, Symbol: "BTCUSDT"})
			_, err := s.js.Publish(context.Background(), "orders.cancel",
				[]byte(fmt.Sprintf(`{"category":%q,"symbol":"BTCUSDT","orderId":%q,"requestId":"%s-%d"}`, cat, o.OrderID, cat, i)))
			require.NoError(t, err)
		}
	}
	want := perCategory * len(messages.Categories)
	require.Eventually(t, func() bool { return len(s.results()) == want }, waitFor, 20*time.Millisecond, "%s", logs)
	for _, r := range s.results() {
		require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	}
	require.Eventually(t, func() bool { return len(s.confirmations()) == want }, waitFor, 20*time.Millisecond, "%s", logs)
	code, body := get(t, base+"/readyz")
	require.Equal(t, http.StatusOK, code, body)
	require.True(t, strings.HasPrefix(body, "ready"), body)
	batched := 0
	for _, q := range s.ex.Requests() {
		if q.Path == "/v5/order/cancel-batch" && q.RetCode == 0 {
			batched++
		}
	}
	require.Positive(t, batched, "linear and option batch")
	require.NoError(t, stop())
	require.Contains(t, logs.String(), "does not offer the API key check")
	require.Contains(t, logs.String(), "cancel-batch is not available")
}

// A stream of the operator's with the cancel and result subjects only: the
// worker runs, cancels, and /readyz's detail says which subject to add for
// cancel-all and for confirmations.
func TestReadyzSaysWhichSubjectToAdd(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	_, err := s.js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "ORDERS",
		Subjects: []string{"orders.cancel", "orders.cancel.ack", "orders.cancel.rejected"}, Duplicates: time.Hour})
	require.NoError(t, err)
	base, logs, stop := startWorker(t, s.env)
	o := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	_, err = s.js.Publish(context.Background(), "orders.cancel", []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"`+o.OrderID+`"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(s.results()) == 1 }, waitFor, 20*time.Millisecond, "%s", logs)
	require.Equal(t, messages.StatusCancelled, s.results()[0].Status)
	var body string
	require.Eventually(t, func() bool {
		var code int
		code, body = get(t, base+"/readyz")
		return code == http.StatusOK
	}, waitFor, 10*time.Millisecond, "%s", logs)
	require.Contains(t, body, "does not capture orders.cancel-all: cancel-all requests are off")
	require.Contains(t, body, "does not capture orders.cancel.confirmed: confirmations are off")
	require.Contains(t, body, "sync cancel-all off: stream ORDERS does not capture orders.cancel-all")
	code, _, errOut := s.cancelCmd("cancel-all", "--category", "linear", "--symbol", "BTCUSDT")
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "no cancel-worker service answers on orders.sync.cancel-all")
	require.NoError(t, stop())
}
