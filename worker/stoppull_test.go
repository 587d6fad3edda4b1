package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// A cancel that reaches a stopping worker's last pull is given back once,
// for the next worker: not handed straight back into that same pull again
// and again (each a delivery) until its last delivery answers it failed,
// unsent. On a consumer without the fleet's priority group nothing else
// keeps the server from redelivering into the pull still open.
func TestACancelReachingAStoppingWorkersPullIsGivenBackOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true})
	ctx := context.Background()
	cons, err := e.js.CreateConsumer(ctx, e.cfg.Stream, jetstream.ConsumerConfig{
		Durable: e.cfg.Consumer, FilterSubjects: []string{e.cfg.CancelSubject, e.cfg.CancelAllSubject},
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 5 * time.Second, MaxDeliver: 20, MaxAckPending: 1000,
	})
	require.NoError(t, err)
	r := e.start()
	require.Eventually(t, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumWaiting == 1
	}, waitFor, 5*time.Millisecond, "the worker's pull is waiting at the server")
	r.stop()
	seq := e.publish(map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": "late-1"}, "")
	require.NoError(t, <-r.done)
	r.done <- nil // for the test's cleanup

	info, err := cons.Info(ctx)
	require.NoError(t, err)
	require.LessOrEqual(t, info.Delivered.Consumer, uint64(1), "delivered to the stopping worker at most once")

	e.start()
	got := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, got.Status, "%+v", got)
	require.LessOrEqual(t, got.Deliveries, uint64(2), "the stopping worker's delivery and the next worker's")
}
