package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor bounds every wait of these tests; it is generous because a wait
// that ends early is success, and only a hang reaches it.
const waitFor = 30 * time.Second

type syncBuffer = embedded.LogBuffer

// env is one test's world: an embedded nats-server, a simulated exchange, a
// subscriber that collects every result, and the worker's configuration.
type env struct {
	t       *testing.T
	ns      *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	ex      *bybittest.Exchange
	handler http.Handler
	srv     *httptest.Server
	cfg     worker.Config
	timeout time.Duration
	logs    *syncBuffer

	mu      sync.Mutex
	results []messages.Result
}

func setup(t *testing.T, exOpts bybittest.Options) *env {
	t.Helper()
	e := &env{t: t, logs: &syncBuffer{}, timeout: 5 * time.Second}
	e.ns = embedded.StartForTest(t, embedded.NATSOptions{})

	e.ex = bybittest.New(exOpts)
	e.handler = e.ex
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { e.handler.ServeHTTP(w, r) }))
	t.Cleanup(e.srv.Close)

	var err error
	e.nc, err = nats.Connect(e.ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(e.nc.Close)
	e.js, err = jetstream.New(e.nc)
	require.NoError(t, err)

	e.cfg = worker.DefaultConfig()
	// What the tests run without unless they turn it on: confirmations,
	// the sync service, the IP ceiling and the stream's size limit; and a
	// shorter stop.
	e.cfg.Confirm, e.cfg.ConfirmedSubject, e.cfg.ConfirmTimeout = false, "", 0
	e.cfg.SyncCancelSubject, e.cfg.SyncCancelAllSubject, e.cfg.SyncMaxTimeout = "", "", 0
	e.cfg.IPLimit, e.cfg.StreamMaxBytes = worker.Rate{}, 0
	e.cfg.ShutdownTimeout = 5 * time.Second
	e.cfg.Logger = newTestLogger(e.logs)
	// Requests may be published before the worker starts.
	_, err = worker.EnsureStream(context.Background(), e.js, e.cfg)
	require.NoError(t, err)
	// Results are read from the stream, as a user must: a plain subscriber
	// also sees publishes the stream dropped as duplicates.
	results, err := e.js.OrderedConsumer(context.Background(), e.cfg.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{e.cfg.AckSubject, e.cfg.RejectedSubject},
	})
	require.NoError(t, err)
	cc, err := results.Consume(func(m jetstream.Msg) {
		r, err := messages.DecodeResult(m.Data())
		if err != nil {
			t.Errorf("undecodable result on %s: %v", m.Subject(), err)
			return
		}
		e.mu.Lock()
		e.results = append(e.results, r)
		e.mu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)
	return e
}

func (e *env) client() *bybit.Client {
	e.t.Helper()
	return demoClient(e.t, e.srv.URL, e.timeout)
}

// demoClient is a client of the simulated exchange at baseURL with its demo
// key.
func demoClient(t *testing.T, baseURL string, timeout time.Duration) *bybit.Client {
	t.Helper()
	c, err := bybit.NewClient(bybit.Options{
		BaseURL: baseURL, APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret, Timeout: timeout,
	})
	require.NoError(t, err)
	return c
}

// runWorker sets a worker with cfg up on js and runs it; stop cancels its
// Run and returns what Run returned.
func runWorker(t *testing.T, cfg worker.Config, js jetstream.JetStream, client *bybit.Client) (w *worker.Worker, stop func() error) {
	t.Helper()
	w, err := worker.New(cfg, js, client)
	require.NoError(t, err)
	require.NoError(t, w.Setup(context.Background()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	return w, func() error { cancel(); return <-done }
}

// running is a worker started by start.
type running struct {
	w    *worker.Worker
	stop context.CancelFunc
	done chan error
}

// start runs a worker until the test ends (or stop is called).
func (e *env) start() *running {
	e.t.Helper()
	w, err := worker.New(e.cfg, e.js, e.client())
	require.NoError(e.t, err)
	require.NoError(e.t, w.Setup(context.Background()))
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{w: w, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- w.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			require.NoError(e.t, err)
		case <-time.After(waitFor):
			e.t.Error("worker did not stop")
		}
	})
	return r
}

// halt stops the worker and waits until its Run returned, without an
// error.
func (r *running) halt(t *testing.T) {
	t.Helper()
	r.stop()
	err := <-r.done
	require.NoError(t, err)
	r.done <- err // for the test's cleanup
}

// addOrders rests n orders of one symbol on the simulated book.
func (e *env) addOrders(n int, category, symbol string) []bybittest.Order {
	orders := make([]bybittest.Order, 0, n)
	for range n {
		orders = append(orders, e.ex.AddOrder(bybittest.Order{Category: category, Symbol: symbol}))
	}
	return orders
}

// publish puts a request on the cancel subject and returns its stream sequence.
func (e *env) publish(body any, msgID string) uint64 {
	e.t.Helper()
	var data []byte
	switch b := body.(type) {
	case string:
		data = []byte(b)
	case []byte:
		data = b
	default:
		var err error
		data, err = json.Marshal(b)
		require.NoError(e.t, err)
	}
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := e.js.Publish(context.Background(), e.cfg.CancelSubject, data, opts...)
	require.NoError(e.t, err)
	return ack.Sequence
}

// publishNumbered publishes cancels of n linear BTCUSDT orders o-0 … o-(n-1)
// (an AutoCreate exchange rests each as its cancel comes).
func (e *env) publishNumbered(n int) {
	e.t.Helper()
	for i := range n {
		e.publish(map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": fmt.Sprint("o-", i)}, "")
	}
}

// cancelledNumbered publishes cancels of n numbered orders (publishNumbered),
// starts a worker and requires every result cancelled; it returns the
// results by request sequence.
func (e *env) cancelledNumbered(n int) map[uint64]messages.Result {
	e.t.Helper()
	e.publishNumbered(n)
	e.start()
	got := e.waitResults(n)
	for _, r := range got {
		require.Equal(e.t, messages.StatusCancelled, r.Status, "%+v", r)
	}
	return got
}

// startedResult publishes a cancel of o (by orderLinkId when byLink), then
// starts a worker, and returns the request's result.
func (e *env) startedResult(o bybittest.Order, byLink bool, requestID string) messages.Result {
	e.t.Helper()
	seq := e.publish(cancelBody(o, byLink, requestID), "")
	e.start()
	return e.waitResults(1)[seq]
}

// cancelBody is a cancel request for an order of the simulated book.
func cancelBody(o bybittest.Order, byLink bool, requestID string) map[string]string {
	m := map[string]string{"category": o.Category, "symbol": o.Symbol}
	if byLink {
		m["orderLinkId"] = o.OrderLinkID
	} else {
		m["orderId"] = o.OrderID
	}
	if requestID != "" {
		m["requestId"] = requestID
	}
	return m
}

// waitResults waits until n results arrived and returns them by request
// sequence.
func (e *env) waitResults(n int) map[uint64]messages.Result {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.results) >= n
	}, waitFor, 5*time.Millisecond, "waiting for %d results\n%s", n, e.logs)
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[uint64]messages.Result{}
	for _, r := range e.results {
		_, dup := out[r.RequestSeq]
		require.False(e.t, dup, "two results for request %d", r.RequestSeq)
		out[r.RequestSeq] = r
	}
	return out
}

// storedResults counts the results in the stream: what a reader relies on,
// whatever the subscriber saw.
func (e *env) storedResults() uint64 {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), e.cfg.Stream)
	require.NoError(e.t, err)
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(">"))
	require.NoError(e.t, err)
	return info.State.Subjects[e.cfg.AckSubject] + info.State.Subjects[e.cfg.RejectedSubject]
}

// settled waits until the consumer holds nothing: every request acked or
// terminated.
func (e *env) settled() {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		c, err := e.js.Consumer(context.Background(), e.cfg.Stream, e.cfg.Consumer)
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0
	}, waitFor, 10*time.Millisecond)
}

// requireSettledWith waits until the consumer holds nothing (settled) and
// requires the stream to hold n results.
func (e *env) requireSettledWith(n int, msgAndArgs ...any) {
	e.t.Helper()
	e.settled()
	require.EqualValues(e.t, n, e.storedResults(), msgAndArgs...)
}

func (e *env) requestsWith(code int) int {
	n := 0
	for _, q := range e.ex.Requests() {
		if isCancel(q) && q.RetCode == code {
			n++
		}
	}
	return n
}

func newTestLogger(w *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (e *env) cancelRequests() int {
	return len(e.cancels())
}

// cancels lists the exchange's log of one order's cancels, by either
// endpoint, in the order they came.
func (e *env) cancels() []bybittest.Request {
	var out []bybittest.Request
	for _, q := range e.ex.Requests() {
		if isCancel(q) {
			out = append(out, q)
		}
	}
	return out
}

// isCancel reports whether a log entry is one order's cancel, by either
// endpoint.
func isCancel(q bybittest.Request) bool {
	return q.Path == "/v5/order/cancel" || q.Path == "/v5/order/cancel-batch"
}

// storedResultsOf reads every result stored in the stream, as a user would.
func storedResultsOf(t *testing.T, js jetstream.JetStream, cfg worker.Config) []messages.Result {
	t.Helper()
	c, err := js.OrderedConsumer(context.Background(), cfg.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{cfg.AckSubject, cfg.RejectedSubject}})
	if err != nil {
		return nil
	}
	var out []messages.Result
	for {
		b, err := c.FetchNoWait(1000)
		if err != nil {
			return out
		}
		got := 0
		for m := range b.Messages() {
			r, err := messages.DecodeResult(m.Data())
			require.NoError(t, err)
			out = append(out, r)
			got++
		}
		if got == 0 {
			return out
		}
	}
}

// connectForFailover connects with reconnects forever, as the command does.
func connectForFailover(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}

// requireOneCancelledResultEach checks the promise after a failure: n
// requests, exactly one result each, every order cancelled at the exchange.
// A result is cancelled, or — when a delivery whose answer was lost with the
// failure had already cancelled the order, and a redelivery found it gone —
// not_open and marked ambiguous.
func requireOneCancelledResultEach(t *testing.T, ex *bybittest.Exchange, results []messages.Result, n int) {
	t.Helper()
	perSeq := map[uint64]int{}
	for _, r := range results {
		perSeq[r.RequestSeq]++
		if r.Status == messages.StatusNotOpen {
			require.True(t, r.Ambiguous && r.Deliveries > 1, "not_open only after a redelivery, and ambiguous: %+v", r)
		} else {
			require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
		}
		o, ok := ex.Order(r.Category, r.OrderID)
		require.True(t, ok, "%+v", r)
		require.Equal(t, "Cancelled", o.Status, "%+v", r)
	}
	require.Len(t, perSeq, n)
	for seq, c := range perSeq {
		require.Equal(t, 1, c, "request %d", seq)
	}
}

// metricSeries finds the first series of reg's metric name whose labels
// match.
func metricSeries(t *testing.T, reg *prometheus.Registry, name string, match func([]*dto.LabelPair) bool) (*dto.Metric, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if match(m.GetLabel()) {
				return m, true
			}
		}
	}
	return nil, false
}

// withLabels matches a series that has each label of pairs (name, value,
// name, value …) set to its value.
func withLabels(pairs ...string) func([]*dto.LabelPair) bool {
	return func(ls []*dto.LabelPair) bool {
		labels := map[string]string{}
		for _, l := range ls {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(pairs); i += 2 {
			if v, ok := labels[pairs[i]]; !ok || v != pairs[i+1] {
				return false
			}
		}
		return true
	}
}

// metricValue reads a gauge or counter series of reg by one label (-1: no
// such series).
func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	m, ok := metricSeries(t, reg, name, withLabels(label, value))
	switch {
	case !ok:
		return -1
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	default:
		return m.GetCounter().GetValue()
	}
}

// counter reads one labelled counter of a registry (0 if never counted).
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	m, ok := metricSeries(t, reg, name, withLabels(label, value))
	if !ok {
		return 0
	}
	return m.GetCounter().GetValue()
}

// gauge reads one gauge of reg by its label values (in label order).
func gauge(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	m, ok := metricSeries(t, reg, name, func(ls []*dto.LabelPair) bool {
		for i, l := range ls {
			if i >= len(labels) || l.GetValue() != labels[i] {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("no %s%v", name, labels)
	}
	return m.GetGauge().GetValue()
}
