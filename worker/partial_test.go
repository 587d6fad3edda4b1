package worker_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// rawConfirmations reads every stored confirmation as JSON objects, keyed by
// Nats-Msg-Id: what a risk engine reading the subject sees.
func (e *env) rawConfirmations(n int) map[string]map[string]any {
	e.t.Helper()
	out := map[string]map[string]any{}
	require.Eventually(e.t, func() bool {
		c, err := e.js.OrderedConsumer(context.Background(), e.cfg.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{e.cfg.ConfirmedSubject}})
		if err != nil {
			return false
		}
		batch, err := c.FetchNoWait(1000)
		if err != nil {
			return false
		}
		for m := range batch.Messages() {
			var v map[string]any
			require.NoError(e.t, json.Unmarshal(m.Data(), &v))
			out[m.Headers().Get(nats.MsgIdHdr)] = v
		}
		return len(out) >= n
	}, waitFor, 10*time.Millisecond, "waiting for %d confirmations\n%s", n, e.logs)
	return out
}

// A partly filled order that is then cancelled: the confirmation says how
// much filled before the cancel landed and at what price, whether the state
// came from the private stream (linear: Cancelled with an executed quantity)
// or from a lookup (spot: PartiallyFilledCanceled).
func TestAPartlyFilledOrderIsConfirmedWithItsFills(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(300 * time.Millisecond)
	reg := prometheus.NewRegistry()
	e.cfg.Registerer = reg
	lin := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", Qty: "0.010", CumExecQty: "0.004", AvgPrice: "97250.5", Status: "PartiallyFilled"})
	spot := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Qty: "2", CumExecQty: "0.5", AvgPrice: "97000"})
	e.start()
	linSeq := e.publish(cancelBody(lin, false, "partial-linear"), "")
	got := e.rawConfirmations(1)
	c := got[messages.ConfirmedMsgID(linSeq, lin.OrderID, "")]
	require.NotNil(t, c, "%v", got)
	require.Equal(t, "Cancelled", c["orderStatus"])
	require.Equal(t, messages.ConfirmedByWebSocket, c["confirmedBy"])
	require.Equal(t, "0.010", c["qty"])
	require.Equal(t, "0.004", c["cumExecQty"], "partly filled before the cancel landed")
	require.Equal(t, "0", c["leavesQty"])
	require.Equal(t, "97250.5", c["avgPrice"])

	// The stream says nothing: the lookup answers, with the same fields.
	e.ex.PausePushes()
	spotSeq := e.publish(cancelBody(spot, false, "partial-spot"), "")
	got = e.rawConfirmations(2)
	c = got[messages.ConfirmedMsgID(spotSeq, spot.OrderID, "")]
	require.NotNil(t, c, "%v", got)
	require.Equal(t, "PartiallyFilledCanceled", c["orderStatus"])
	require.Equal(t, messages.ConfirmedByREST, c["confirmedBy"])
	require.Equal(t, "2", c["qty"])
	require.Equal(t, "0.5", c["cumExecQty"])
	require.Equal(t, "0", c["leavesQty"])
	require.Equal(t, "97000", c["avgPrice"])

	// The README's alert on partly filled orders has its series.
	require.Eventually(t, func() bool {
		return partlyFilled(t, reg, "linear") == 1 && partlyFilled(t, reg, "spot") == 1
	}, waitFor, 10*time.Millisecond)
}

// partlyFilled reads cancel_worker_confirmations_partly_filled_total of a
// category from reg (-1: no such series).
func partlyFilled(t *testing.T, reg *prometheus.Registry, category string) float64 {
	t.Helper()
	return metricValue(t, reg, "cancel_worker_confirmations_partly_filled_total", "category", category)
}
