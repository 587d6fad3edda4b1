package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

func batchRequests(ex *bybittest.Exchange) (refused, items int) {
	for _, q := range ex.Requests() {
		if q.Path != "/v5/order/cancel-batch" {
			continue
		}
		if q.Symbol == "" { // refused as a whole: one entry, no order
			refused++
		} else {
			items++
		}
	}
	return refused, items
}

// Where cancel-batch is not offered — Bybit's demo trading for spot and
// inverse (10032), a classic account (HTTP 404), a route Bybit does not know
// (10017) — the refused batch is sent again as single cancels, and the lane
// remembers: no batch is tried after it learnt, and it is said once.
func TestBatchUnavailableFallsBackToSingleCancelsAndRemembers(t *testing.T) {
	t.Parallel()
	var routeRefusals atomic.Int32 // answered before the simulator logs them
	routeNotFound := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v5/order/cancel-batch" {
				routeRefusals.Add(1)
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"retCode":10017,"retMsg":"route not found","result":{},"retExtInfo":{},"time":%d}`, time.Now().UnixMilli())
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	for name, tc := range map[string]struct {
		opts     bybittest.Options
		category string
		wrap     func(http.Handler) http.Handler
	}{
		"demo spot (10032)":       {opts: bybittest.Options{Demo: true}, category: "spot"},
		"demo inverse (10032)":    {opts: bybittest.Options{Demo: true}, category: "inverse"},
		"classic account (404)":   {opts: bybittest.Options{Accounts: []bybittest.Account{{APIKey: bybittest.DemoAPIKey, Secret: bybittest.DemoAPISecret, UID: "demo", Classic: true}}}, category: "linear"},
		"route not found (10017)": {category: "linear", wrap: routeNotFound},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, tc.opts)
			if tc.wrap != nil {
				e.handler = tc.wrap(e.ex)
			}
			reg := prometheus.NewRegistry()
			e.cfg.Registerer = reg
			e.cfg.Limits = map[string]int{"cancel/" + tc.category: 4, "cancel-batch/" + tc.category: 10}
			// Explicit: not raised to what Bybit reports (spot's 20), or the
			// first answer could raise the single budget before it is spent
			// and no batch would be tried.
			e.cfg.LimitCeilings = e.cfg.Limits
			const n = 12
			for i := range n {
				o := e.ex.AddOrder(bybittest.Order{Category: tc.category, Symbol: "BTCUSDT"})
				e.publish(cancelBody(o, false, fmt.Sprint("r-", i)), "")
			}
			e.start()
			got := e.waitResults(n)
			for _, r := range got {
				require.Equal(t, messages.StatusCancelled, r.Status, "never rejected for a batch the environment lacks: %+v", r)
				require.False(t, r.Ambiguous, "%+v", r)
			}
			refused, items := batchRequests(e.ex)
			if tc.wrap != nil {
				refused += int(routeRefusals.Load())
			}
			// Batches sent before the first refusal came back are refused
			// too (and their orders sent alone); none after it.
			require.Positive(t, refused)
			require.Zero(t, items)
			require.Equal(t, 1, strings.Count(e.logs.String(), "cancel-batch is not available"), "said once\n%s", e.logs)
			require.Equal(t, 1.0, metricValue(t, reg, "cancel_worker_batch_unavailable", "category", tc.category))

			refusedBefore := refused
			// Later bursts go as single cancels at once.
			for i := range n {
				o := e.ex.AddOrder(bybittest.Order{Category: tc.category, Symbol: "BTCUSDT"})
				e.publish(cancelBody(o, false, fmt.Sprint("later-", i)), "")
			}
			got = e.waitResults(2 * n)
			for _, r := range got {
				require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
			}
			refused, _ = batchRequests(e.ex)
			if tc.wrap != nil {
				refused += int(routeRefusals.Load())
			}
			require.Equal(t, refusedBefore, refused, "remembered: no batch after the lane learnt")
		})
	}
}

// A batch refused as a whole for any other reason (here 10001 once) is
// retried order by order as single cancels: Bybit's answer to each decides
// its result, never one shared rejected. The lane keeps batching.
func TestWholeBatchRefusalIsRetriedOrderByOrder(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	var refusedOnce atomic.Bool
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v5/order/cancel-batch" && refusedOnce.CompareAndSwap(false, true) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"retCode":10001,"retMsg":"params error: request","result":{},"retExtInfo":{},"time":%d}`, time.Now().UnixMilli())
			return
		}
		e.ex.ServeHTTP(w, r)
	})
	e.cfg.Limits = map[string]int{"cancel/linear": 4, "cancel-batch/linear": 10}
	const n = 12
	gone := map[uint64]bool{}
	for i := range n {
		if i == n-1 { // one order that is not open: its own answer says so
			gone[e.publish(map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": "no-such-order"}, "")] = true
			continue
		}
		o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
		e.publish(cancelBody(o, false, ""), "")
	}
	e.start()
	got := e.waitResults(n)
	for seq, r := range got {
		if gone[seq] {
			require.Equal(t, messages.StatusNotOpen, r.Status, "%+v", r)
			continue
		}
		require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	}
	require.True(t, refusedOnce.Load())
	require.Contains(t, e.logs.String(), "cancel-batch refused as a whole")

	// Not remembered: the next burst batches again.
	for range n {
		o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
		e.publish(cancelBody(o, false, ""), "")
	}
	got = e.waitResults(2 * n)
	cancelled := 0
	for _, r := range got {
		if r.Status == messages.StatusCancelled {
			cancelled++
		}
	}
	require.Equal(t, 2*n-1, cancelled)
	_, items := batchRequests(e.ex)
	require.Positive(t, items, "the lane still batches")
}

// Bybit's demo trading has no GET /v5/user/query-api: the key check it does
// not offer is a warning, not a refusal to start.
func TestKeyCheckTheEnvironmentDoesNotOfferIsAWarning(t *testing.T) {
	t.Parallel()
	ex := bybittest.New(bybittest.Options{Demo: true})
	srv := httptest.NewServer(ex)
	t.Cleanup(srv.Close)
	c, err := bybit.NewClient(bybit.Options{BaseURL: srv.URL, APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret})
	require.NoError(t, err)
	logs := &embedded.LogBuffer{}
	require.NoError(t, worker.Preflight(context.Background(), c, slog.New(slog.NewTextHandler(logs, nil))))
	require.Contains(t, logs.String(), "level=WARN")
	require.Contains(t, logs.String(), "does not offer the API key check")
	_, synced := c.ClockOffset()
	require.True(t, synced)
}

// The worker runs against demo trading end to end: single cancels and
// batches in every category, a cancel-all, confirmations.
func TestWorkerRunsAgainstDemoTrading(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{Demo: true})
	e.withConfirm(time.Second)
	e.cfg.Limits = map[string]int{"cancel/linear": 2, "cancel/spot": 2, "cancel/inverse": 2, "cancel/option": 2,
		"cancel-batch/linear": 10, "cancel-batch/spot": 10, "cancel-batch/inverse": 10, "cancel-batch/option": 10}
	want := 0
	for _, cat := range messages.Categories {
		for range 6 {
			o := e.ex.AddOrder(bybittest.Order{Category: cat, Symbol: "BTCUSDT"})
			e.publish(cancelBody(o, false, ""), "")
			want++
		}
	}
	e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT"})
	_, err := e.js.Publish(context.Background(), e.cfg.CancelAllSubject, []byte(`{"category":"spot","symbol":"ETHUSDT","requestId":"demo-all"}`))
	require.NoError(t, err)
	want++
	r := e.start()
	got := e.waitResults(want)
	for _, res := range got {
		require.Equal(t, messages.StatusCancelled, res.Status, "%+v", res)
	}
	require.Len(t, e.rawConfirmations(want), want, "every order confirmed")
	_, items := batchRequests(e.ex)
	require.Positive(t, items, "linear and option still batch")
	ok, detail := r.w.Ready()
	require.True(t, ok, detail)
	require.Contains(t, e.logs.String(), "does not offer the API key check")
}

// An operator's stream that captures the cancel subject and the results but
// neither the cancel-all subject nor the confirmed one: the cancel path runs;
// cancel-all intake and confirmations are off, and the worker says once, and
// on its readiness detail, which subject to add for which.
func TestOperatorStreamWithoutOptionalSubjectsStillCancels(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(time.Second)
	ctx := context.Background()
	cfg := e.cfg
	cfg.Stream, cfg.Consumer = "OPS", "ops-worker"
	cfg.CancelSubject, cfg.CancelAllSubject, cfg.CancelAllProgressSubject = "ops.cancel", "ops.cancel-all", "ops.cancel-all.progress"
	cfg.AckSubject, cfg.RejectedSubject, cfg.ConfirmedSubject = "ops.cancel.ack", "ops.cancel.rejected", "ops.cancel.confirmed"
	_, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "OPS", Subjects: []string{"ops.cancel", "ops.cancel.ack", "ops.cancel.rejected"}, Duplicates: 2 * time.Hour})
	require.NoError(t, err)
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	data := []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"` + o.OrderID + `"}`)
	_, err = e.js.Publish(ctx, "ops.cancel", data)
	require.NoError(t, err)

	w, err := worker.New(cfg, e.js, e.client())
	require.NoError(t, err)
	require.NoError(t, w.Setup(ctx), "the cancel path runs without the optional subjects")
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	t.Cleanup(func() { stop(); require.NoError(t, <-done) })

	var results []messages.Result
	require.Eventually(t, func() bool { results = storedResultsOf(t, e.js, cfg); return len(results) == 1 }, waitFor, 10*time.Millisecond, "%s", e.logs)
	require.Equal(t, messages.StatusCancelled, results[0].Status)

	ok, detail := w.Ready()
	require.True(t, ok, detail)
	require.Contains(t, detail, "ops.cancel-all", "says which subject to add for cancel-all")
	require.Contains(t, detail, "ops.cancel.confirmed", "and for confirmations")
	logs := e.logs.String()
	require.Equal(t, 1, strings.Count(logs, "add ops.cancel-all to the stream's subjects"), logs)
	require.Equal(t, 1, strings.Count(logs, "add ops.cancel.confirmed to the stream's subjects"), logs)

	cons, err := e.js.Consumer(ctx, "OPS", "ops-worker")
	require.NoError(t, err)
	require.Equal(t, []string{"ops.cancel"}, cons.CachedInfo().Config.FilterSubjects, "consumes what the stream captures")
	_, err = e.js.Consumer(ctx, "OPS", cfg.ConfirmConsumer())
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound, "confirmations are off")
	s, err := e.js.Stream(ctx, "OPS")
	require.NoError(t, err)
	require.Equal(t, []string{"ops.cancel", "ops.cancel.ack", "ops.cancel.rejected"}, s.CachedInfo().Config.Subjects, "the operator's stream is left unchanged")
}

// With several accounts, a key refused at start stops only that account's
// check: the worker starts, says so (log, readiness detail, metric), and still
// sends the account's cancels — Bybit's answer decides each, so a key fixed
// on Bybit's side works without a restart.
func TestOneRefusedKeyDoesNotStopTheOtherAccounts(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	reg := prometheus.NewRegistry()
	e.cfg.Registerer = reg
	bad, err := bybit.NewClient(bybit.Options{BaseURL: e.srv.URL, APIKey: "hedge-key", APISecret: "hedge-secret"})
	require.NoError(t, err)
	e.cfg.Accounts = map[string]worker.Account{"hedge": {Client: bad}}
	w, err := worker.New(e.cfg, e.js, e.client())
	require.NoError(t, err)
	require.NoError(t, w.Setup(context.Background()), "one usable account is enough to start")
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { stop(); require.NoError(t, <-done) })

	require.Contains(t, e.logs.String(), "account hedge")
	require.Eventually(t, func() bool { ok, _ := w.Ready(); return ok }, waitFor, 10*time.Millisecond)
	_, detail := w.Ready()
	require.Contains(t, detail, "account hedge")
	require.Contains(t, detail, "10003")
	require.Equal(t, 0.0, metricValue(t, reg, "cancel_worker_account_usable", "account", "hedge"))
	require.Equal(t, 1.0, metricValue(t, reg, "cancel_worker_account_usable", "account", worker.DefaultAccount))

	good := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	hedged := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	e.publish(cancelBody(good, false, "default-1"), "")
	body := cancelBody(hedged, false, "hedge-1")
	body["account"] = "hedge"
	e.publish(body, "")
	got := e.waitResults(2)
	byID := map[string]messages.Result{}
	for _, r := range got {
		byID[r.RequestID] = r
	}
	require.Equal(t, messages.StatusCancelled, byID["default-1"].Status)
	require.Equal(t, messages.StatusRejected, byID["hedge-1"].Status, "sent, and Bybit's answer decides")
	require.Equal(t, 10003, *byID["hedge-1"].RetCode)

	// The key is fixed on Bybit's side: the next cancel works, no restart.
	e.ex.AddAccount(bybittest.Account{APIKey: "hedge-key", Secret: "hedge-secret"})
	body["requestId"] = "hedge-2"
	e.publish(body, "")
	got = e.waitResults(3)
	for _, r := range got {
		if r.RequestID == "hedge-2" {
			require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
		}
	}
	require.Eventually(t, func() bool {
		return metricValue(t, reg, "cancel_worker_account_usable", "account", "hedge") == 1
	}, waitFor, 10*time.Millisecond)
	_, detail = w.Ready()
	require.NotContains(t, detail, "account hedge")
}

// No usable account at all: the worker does not start, and says why for each.
func TestNoUsableAccountStopsTheWorker(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	c1, err := bybit.NewClient(bybit.Options{BaseURL: e.srv.URL, APIKey: "k1", APISecret: "s1"})
	require.NoError(t, err)
	c2, err := bybit.NewClient(bybit.Options{BaseURL: e.srv.URL, APIKey: "k2", APISecret: "s2"})
	require.NoError(t, err)
	e.cfg.Accounts = map[string]worker.Account{"one": {Client: c1}, "two": {Client: c2}}
	w, err := worker.New(e.cfg, e.js, nil)
	require.NoError(t, err)
	err = w.Setup(context.Background())
	require.ErrorContains(t, err, "account one")
	require.ErrorContains(t, err, "account two")
}

// A private WebSocket that refuses one account's key, while another account
// is fine: the worker starts, and that account counts as failing its
// start-up check.
func TestAWebSocketRefusingOneAccountDoesNotStopTheOthers(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(time.Second)
	reg := prometheus.NewRegistry()
	e.cfg.Registerer = reg
	other := httptest.NewServer(bybittest.New(bybittest.Options{Accounts: []bybittest.Account{{APIKey: "someone-else", Secret: "x"}}}))
	t.Cleanup(other.Close)
	c, err := bybit.NewClient(bybit.Options{BaseURL: e.srv.URL, APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret})
	require.NoError(t, err)
	e.cfg.Accounts = map[string]worker.Account{"elsewhere": {Client: c, WSURL: "ws" + strings.TrimPrefix(other.URL, "http") + "/v5/private"}}
	w, err := worker.New(e.cfg, e.js, e.client())
	require.NoError(t, err)
	require.NoError(t, w.Setup(context.Background()))
	require.Equal(t, 0.0, metricValue(t, reg, "cancel_worker_account_usable", "account", "elsewhere"))
	require.Equal(t, 1.0, metricValue(t, reg, "cancel_worker_account_usable", "account", worker.DefaultAccount))
	require.Contains(t, e.logs.String(), "private WebSocket")
	require.NotContains(t, e.logs.String(), bybittest.DemoAPISecret)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	require.Eventually(t, func() bool { ok, _ := w.Ready(); return ok }, waitFor, 10*time.Millisecond)
	_, detail := w.Ready()
	require.Contains(t, detail, "account elsewhere")
	stop()
	require.NoError(t, <-done)
}
