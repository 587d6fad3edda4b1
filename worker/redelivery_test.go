package worker_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// exchangeFront serves the simulated exchange to one worker, letting a test
// hold a cancel or its answer: before(body) runs before the exchange sees the
// request, after(body) once it has answered and before the answer goes back.
func exchangeFront(t *testing.T, ex http.Handler, before, after func(body []byte)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		cancel := strings.HasPrefix(r.URL.Path, "/v5/order/cancel")
		if before != nil && cancel {
			before(body)
		}
		rec := httptest.NewRecorder()
		ex.ServeHTTP(rec, r)
		if after != nil && cancel {
			after(body)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// startWorkerVia runs a worker with cfg on its own NATS connection to
// natsURL, sending to the exchange at baseURL, until the test ends.
func startWorkerVia(t *testing.T, cfg worker.Config, natsURL, baseURL string) *worker.Worker {
	t.Helper()
	_, js := connectForFailover(t, natsURL)
	w, stop := runWorker(t, cfg, js, demoClient(t, baseURL, waitFor))
	t.Cleanup(func() { require.NoError(t, stop()) })
	return w
}

// storedByADeadWorker is a worker that took request earlier.RequestSeq from
// cons, stored earlier as its result and died before its ack arrived: the
// message goes back (a Nak) with its result in the stream.
func (e *env) storedByADeadWorker(cons jetstream.Consumer, earlier messages.Result) {
	e.t.Helper()
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(waitFor), jetstream.FetchPriorityGroup(worker.PriorityGroup))
	require.NoError(e.t, err)
	msg := <-batch.Messages()
	require.NotNil(e.t, msg)
	data, err := earlier.Marshal()
	require.NoError(e.t, err)
	_, err = e.js.PublishMsg(context.Background(), &nats.Msg{Subject: e.cfg.AckSubject, Data: data}, jetstream.WithMsgID(messages.ResultMsgID(earlier.RequestSeq)))
	require.NoError(e.t, err)
	require.NoError(e.t, msg.Nak())
}

// startWorkerA runs worker A, logging as A, with a registry of its own and
// its NATS connection through a proxy the test can cut, sending to the
// exchange at front; it returns the registry and the proxy.
func (e *env) startWorkerA(front string) (*prometheus.Registry, *proxy) {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	cfg := e.cfg
	cfg.Registerer = reg
	cfg.Logger = e.cfg.Logger.With("worker", "A")
	pa := newProxy(e.t, e.ns.Addr().String())
	startWorkerVia(e.t, cfg, pa.url(), front)
	return reg, pa
}

// startWorkerB runs worker B, logging as B, straight on the test's
// nats-server, sending to the exchange at front.
func (e *env) startWorkerB(front string) {
	e.t.Helper()
	cfg := e.cfg
	cfg.Logger = e.cfg.Logger.With("worker", "B")
	startWorkerVia(e.t, cfg, e.ns.ClientURL(), front)
}

func (e *env) resultFor(seq uint64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.results {
		if r.RequestSeq == seq {
			return true
		}
	}
	return false
}

// Issue 19, deterministically. Worker A holds two requests, one sent and one
// waiting for budget, when it loses its server for longer than AckWait; the
// broker hands both to worker B, whose cancels land. A's own copies must not
// then race B's: A does not send the one it had not sent, and does not store
// the not_open its earlier call got back (the order is gone because B's
// cancel landed first). Stored first, A's not_open — deliveries 1, not
// ambiguous — would be kept by the result's Nats-Msg-Id and tell an
// untruth; the stored results are B's, cancelled.
func TestACopyTheBrokerHandedToAnotherWorkerIsNotRaced(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.AckWait = time.Second
	e.cfg.MaxAckPending = 2 // A holds both, and pulls nothing more
	e.cfg.Batch = false
	e.cfg.Limits = map[string]int{"cancel/linear": 1} // X waits behind S
	s := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	x := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	seqS := e.publish(cancelBody(s, false, "s"), "")
	seqX := e.publish(cancelBody(x, false, "x"), "")

	aGotS := make(chan struct{})
	bCancelledX := make(chan struct{})
	aDecidedX := make(chan struct{})
	var aSentX atomic.Bool
	var once sync.Once
	aFront := exchangeFront(t, e.ex, func(body []byte) {
		switch {
		case bytes.Contains(body, []byte(s.OrderID)):
			close(aGotS)
			<-bCancelledX // A's first call lands after B's
		case bytes.Contains(body, []byte(x.OrderID)):
			aSentX.Store(true)
		}
	}, nil)
	bFront := exchangeFront(t, e.ex, nil, func(body []byte) {
		if bytes.Contains(body, []byte(x.OrderID)) {
			once.Do(func() { close(bCancelledX) })
			<-aDecidedX // B's result for X is stored after A had its chance
		}
	})

	regA, pa := e.startWorkerA(aFront)
	<-aGotS
	require.Eventually(t, func() bool {
		c, err := e.js.Consumer(context.Background(), e.cfg.Stream, e.cfg.Consumer)
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumAckPending == 2 && info.NumPending == 0
	}, waitFor, 10*time.Millisecond, "A holds both requests")
	pa.cut()

	e.startWorkerB(bFront)
	<-bCancelledX
	pa.restore()
	// A has decided about X once it stored a result for it, or let both
	// go (S when its not_open came back, X before sending).
	require.Eventually(t, func() bool {
		return e.resultFor(seqX) || counter(t, regA, "cancel_worker_retries_total", "reason", "possibly_redelivered") >= 2
	}, waitFor, 10*time.Millisecond, "%s", e.logs)
	close(aDecidedX)

	got := e.waitResults(2)
	e.requireSettledWith(2)
	requireOneCancelledResultEach(t, e.ex, []messages.Result{got[seqS], got[seqX]}, 2)
	for _, seq := range []uint64{seqS, seqX} {
		require.Equal(t, messages.StatusCancelled, got[seq].Status, "the result of the cancel that landed: %+v", got[seq])
		require.True(t, got[seq].Ambiguous, "B's delivery came after A's: %+v", got[seq])
		require.EqualValues(t, 2, got[seq].Deliveries)
	}
	require.False(t, aSentX.Load(), "A sent its copy of a request the broker had handed to B")
}

// Issue 13, defect 2. A held message the broker redelivers to the same
// worker (its heartbeats were lost meanwhile) on the consumer's last
// delivery: the retry budget's end answers failed, as on any last delivery.
// Going by the stale first delivery, it was Nak'd into nothing: the broker
// delivers it no more, and the request never got a result.
func TestALastDeliveryThatFindsItsMessageHeldIsAnsweredAtTheBudgetsEnd(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.AckWait = time.Second
	e.cfg.MaxDeliver = 3
	e.cfg.RetryBudget = 200 * time.Millisecond
	e.cfg.Batch = false
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	for range 200 {
		e.ex.InjectFault(bybittest.Fault{RetCode: 10016, RetMsg: "service restarting"})
	}
	seq := e.publish(cancelBody(o, false, ""), "")

	first := make(chan struct{})
	redelivered := make(chan struct{})
	var once sync.Once
	front := exchangeFront(t, e.ex, func([]byte) {
		once.Do(func() {
			close(first)
			<-redelivered // the first attempt is answered after the last delivery arrived
		})
	}, nil)
	pa := newProxy(t, e.ns.Addr().String())
	w := startWorkerVia(t, e.cfg, pa.url(), front)
	<-first
	pa.freeze()

	// The worker cannot heartbeat: past AckWait the broker hands the
	// message out again (here to the test, which gives it back), and then
	// a third and last time, to the worker again.
	cons, err := e.js.Consumer(context.Background(), e.cfg.Stream, e.cfg.Consumer)
	require.NoError(t, err)
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(waitFor), jetstream.FetchPriorityGroup(worker.PriorityGroup))
	require.NoError(t, err)
	msg := <-batch.Messages()
	require.NotNil(t, msg)
	meta, err := msg.Metadata()
	require.NoError(t, err)
	require.EqualValues(t, 2, meta.NumDelivered)
	require.NoError(t, msg.Nak())
	pa.thaw()
	require.Eventually(t, func() bool { return w.Stats().Redelivered.Load() >= 1 }, waitFor, 10*time.Millisecond)
	close(redelivered)

	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusFailed, r.Status, "%+v", r)
	require.EqualValues(t, 3, r.Deliveries)
	require.True(t, r.Ambiguous, "another consumer held the message in between")
	require.Contains(t, r.LastError, "last delivery")
	e.requireSettledWith(1)
}

// Issue 13, defect 6: when an earlier delivery already stored the result
// (the PubAck says Duplicate), the metrics and the log give the stored
// result, not this delivery's own, and the log says the stored one was kept.
func TestMetricsAndLogsGiveTheStoredResultWhenAnEarlierOneWasKept(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	ctx := context.Background()
	cons, _, err := worker.EnsureConsumer(ctx, e.js, e.cfg)
	require.NoError(t, err)
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	seq := e.publish(cancelBody(o, false, "kept"), "")

	// An earlier worker cancelled the order, stored its result and died
	// before its ack arrived.
	e.ex.SetOrderStatus("linear", o.OrderID, "Cancelled")
	e.storedByADeadWorker(cons, messages.Result{RequestID: "kept", RequestSeq: seq, Status: messages.StatusCancelled, Category: "linear", Symbol: "BTCUSDT", OrderID: o.OrderID, Attempts: 1, Deliveries: 1})

	reg := prometheus.NewRegistry()
	e.cfg.Registerer = reg
	e.start()
	e.requireSettledWith(1)
	require.Equal(t, messages.StatusCancelled, e.waitResults(1)[seq].Status)
	require.Equal(t, 1.0, counter(t, reg, "cancel_worker_results_total", "status", "cancelled"), "the stored result is counted")
	require.Zero(t, counter(t, reg, "cancel_worker_results_total", "status", "not_open"), "this delivery's own not_open was not stored")
	// The outcome is logged once the request is acked.
	require.Eventually(t, func() bool {
		return strings.Contains(e.logs.String(), `msg="cancel cancelled (the result stored by an earlier delivery was kept)"`)
	}, waitFor, 5*time.Millisecond)
	logs := e.logs.String()
	require.Contains(t, logs, "storedResultKept=true thisDeliveryStatus=not_open")
	require.NotContains(t, logs, `msg="cancel not_open"`)
}

// A cancel-all's further calls, like a lane's cancels, are not sent once the
// broker may have handed the request to another worker: worker A's first
// call (500 of 700 orders) comes back while its heartbeats go unanswered and
// worker B runs the redelivery; A sends no second call.
func TestACancelAllTheBrokerHandedToAnotherWorkerMakesNoFurtherCall(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.AckWait = time.Second
	for range 700 {
		e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	}
	seq := e.publishAll(`{"category":"linear","symbol":"BTCUSDT"}`)

	aCalled := make(chan struct{})
	bStored := make(chan struct{})
	var aCalls atomic.Int32
	aFront := exchangeFront(t, e.ex, nil, func([]byte) {
		if aCalls.Add(1) == 1 {
			close(aCalled)
			<-bStored // A's first answer comes back after B's result
		}
	})
	regA, pa := e.startWorkerA(aFront)
	<-aCalled
	pa.cut()

	e.startWorkerB(e.srv.URL)
	got := e.waitResults(1)
	close(bStored)
	require.Eventually(t, func() bool {
		return counter(t, regA, "cancel_worker_retries_total", "reason", "possibly_redelivered") >= 1
	}, waitFor, 10*time.Millisecond, "%s", e.logs)
	require.EqualValues(t, 1, aCalls.Load(), "A made a further call of a cancel-all the broker had handed to B")
	require.Equal(t, messages.StatusCancelled, got[seq].Status)
}
