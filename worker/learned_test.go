package worker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// An account above the base tier: the worker starts at Bybit's documented
// 10/s and paces to the 40/s every answer reports, without BYBIT_LIMITS;
// an explicit entry caps what it learns. From the exchange's request log:
// never more in one window than the limit in force, no 10006.
func TestLimitLearnedFromHeaderCappedByExplicitCeiling(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		ceiling map[string]int
		want    int
	}{
		{"raised to the header", nil, 40},
		{"capped by an explicit entry", map[string]int{"cancel/linear": 15}, 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, bybittest.Options{AutoCreate: true,
				UIDLimits: map[string]map[string]int{"demo": {"cancel/linear": 40}}})
			e.cfg.Batch = false
			e.cfg.LimitCeilings = tc.ceiling
			reg := prometheus.NewRegistry()
			e.cfg.Registerer = reg
			const n = 120
			e.cancelledNumbered(n)
			require.Equal(t, float64(tc.want), budgetLimit(t, reg, "cancel", "linear"), "the learned limit")
			require.Equal(t, float64(tc.want), budgetLimit(t, reg, "cancel", "inverse"), "linear and inverse share one budget")
			require.Zero(t, e.requestsWith(10006))
			require.LessOrEqual(t, maxInWindow(e.ex.Requests(), time.Second), tc.want)
			require.Contains(t, e.logs.String(), fmt.Sprintf("limit=%d", tc.want), "the change is logged")
		})
	}
}

// Linear and inverse cancels spend one budget of the UID, as Bybit's table
// has it: paced together, they never exceed it and meet no 10006.
func TestLinearAndInverseShareOneBudget(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true})
	e.cfg.Batch = false
	const n = 40
	for i := range n {
		category, symbol := "linear", "BTCUSDT"
		if i%2 == 1 {
			category, symbol = "inverse", "BTCUSD"
		}
		e.publish(map[string]string{"category": category, "symbol": symbol, "orderId": fmt.Sprint("o-", i)}, "")
	}
	e.start()
	e.waitResults(n)
	require.Zero(t, e.requestsWith(10006), "both categories paced to the one budget")
	require.LessOrEqual(t, maxInWindow(e.ex.Requests(), time.Second), 10)
}

// maxInWindow is the most single cancels the exchange accepted in any
// window of length d.
func maxInWindow(log []bybittest.Request, d time.Duration) int {
	var times []time.Time
	for _, q := range log {
		if q.Path == "/v5/order/cancel" && q.RetCode != 10006 {
			times = append(times, q.Time)
		}
	}
	most := 0
	for i := range times {
		j := i
		for j < len(times) && times[j].Sub(times[i]) < d {
			j++
		}
		most = max(most, j-i)
	}
	return most
}

// budgetLimit reads cancel_worker_budget_limit of an endpoint and category
// (-1: no such series).
func budgetLimit(t *testing.T, reg *prometheus.Registry, endpoint, category string) float64 {
	t.Helper()
	m, ok := metricSeries(t, reg, "cancel_worker_budget_limit", withLabels("endpoint", endpoint, "category", category))
	if !ok {
		return -1
	}
	return m.GetGauge().GetValue()
}

// An operator's consumer without the fleet's priority group keeps today's
// shares: the worker says at start what to add, and paces to its share.
func TestOperatorConsumerWithoutPriorityGroupKeepsShares(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true})
	_, err := e.js.CreateConsumer(context.Background(), e.cfg.Stream, jetstream.ConsumerConfig{
		Durable: e.cfg.Consumer, FilterSubjects: []string{e.cfg.CancelSubject, e.cfg.CancelAllSubject},
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 5 * time.Second, MaxAckPending: 1000,
	})
	require.NoError(t, err)
	e.cfg.LimitShare = 0.5
	e.cfg.Batch = false
	reg := prometheus.NewRegistry()
	e.cfg.Registerer = reg
	seq := e.publish(map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": "share-1"}, "")
	e.start()
	require.Equal(t, messages.StatusCancelled, e.waitResults(1)[seq].Status)
	require.Contains(t, e.logs.String(), "no pinned-client priority group")
	require.Contains(t, e.logs.String(), "--pinned-groups "+worker.PriorityGroup)
	require.Equal(t, float64(5), budgetLimit(t, reg, "cancel", "linear"), "half of the 10/s Bybit reports")
}

// Two replicas on the worker's consumer: both report ready, one reports
// itself active and sends everything, the other stands by.
func TestStandbyReportsReadyAndInactive(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true})
	regs := []*prometheus.Registry{prometheus.NewRegistry(), prometheus.NewRegistry()}
	var rs []*running
	for _, reg := range regs {
		e.cfg.Registerer = reg
		rs = append(rs, e.start())
	}
	const n = 20
	for i := range n {
		e.publish(map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": fmt.Sprint("standby-", i)}, "")
	}
	e.waitResults(n)
	received := []int64{rs[0].w.Stats().Received.Load(), rs[1].w.Stats().Received.Load()}
	active := 0
	if received[1] > 0 {
		active = 1
	}
	require.Zero(t, received[1-active], "the standby received nothing")
	require.EqualValues(t, n, received[active])
	require.Eventually(t, func() bool {
		return gaugeOf(t, regs[active], "cancel_worker_active") == 1 && gaugeOf(t, regs[1-active], "cancel_worker_active") == 0
	}, waitFor, 10*time.Millisecond)
	for _, r := range rs {
		ok, why := r.w.Ready()
		require.True(t, ok, why)
	}
}

// gaugeOf reads the single series of a gauge (-1: none).
func gaugeOf(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}
