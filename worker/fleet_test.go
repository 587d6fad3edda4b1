package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// An operator's cancel consumer without the fleet's
// priority group, confirmations on (the worker creates the confirmation
// consumer, pinned). The fleet's contact loop only runs for a pinned cancel
// consumer, so the confirmation pin's lease never starts: a replica that
// holds the confirmation pin must still be able to look orders up over REST.
func TestACancelConsumerWithoutTheGroupStillConfirmsOverREST(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(200 * time.Millisecond)
	e.cfg.WSURL = "ws://127.0.0.1:1/v5/private" // nothing listens: REST lookups only
	_, err := e.js.CreateConsumer(context.Background(), e.cfg.Stream, jetstream.ConsumerConfig{
		Durable: e.cfg.Consumer, FilterSubjects: []string{e.cfg.CancelSubject, e.cfg.CancelAllSubject},
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 5 * time.Second, MaxAckPending: 1000,
	})
	require.NoError(t, err)
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	e.start()
	seq := e.publish(cancelBody(o, false, ""), "")
	require.Equal(t, messages.StatusCancelled, e.waitResults(1)[seq].Status)
	conf := e.waitConfirmations(1)[messages.ConfirmedMsgID(seq, o.OrderID, "")]
	require.Equal(t, "Cancelled", conf.OrderStatus, "%+v\nlookups sent: %d\n%s", conf, e.lookups(), e.logs)
	require.Equal(t, messages.ConfirmedByREST, conf.ConfirmedBy)
}

// The cancel consumer and the confirmation consumer
// are pinned independently, so after a pin change on one of them (a
// consumer-leader change drops its pins; here an UNPIN of the cancel
// consumer) two replicas work at once — one cancelling, the other looking
// orders up — each pacing the process-wide IP limit as if it were alone.
// Replicas behind one IP then spend twice BYBIT_IP_LIMIT: the way into
// Bybit's IP ban (403, minutes without cancels).
func TestReplicasWithSplitPinsKeepTheIPLimit(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.withConfirm(100 * time.Millisecond)
	e.cfg.WSURL = "ws://127.0.0.1:1/v5/private" // nothing listens: REST lookups only
	e.cfg.Batch = false
	const ipLimit = 4
	e.cfg.IPLimit = worker.Rate{N: ipLimit, Per: time.Second}
	first := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	e.start()
	seq := e.publish(cancelBody(first, false, ""), "")
	e.waitConfirmations(1) // the first replica holds both pins
	_ = seq
	e.start() // the second replica stands by on both consumers
	s, err := e.js.Stream(context.Background(), e.cfg.Stream)
	require.NoError(t, err)
	require.NoError(t, s.UnpinConsumer(context.Background(), e.cfg.Consumer, worker.PriorityGroup))
	const n = 24
	orders := e.addOrders(n, "linear", "BTCUSDT")
	for _, o := range orders {
		e.publish(cancelBody(o, false, ""), "")
	}
	e.waitConfirmations(n + 1)
	var times []time.Time
	var sent []string
	for _, q := range e.ex.Requests() {
		switch q.Path {
		case "/v5/order/cancel", "/v5/order/realtime", "/v5/order/history":
			times = append(times, q.Time)
			sent = append(sent, q.Time.Format("05.000")+" "+q.RemoteAddr+" "+q.Path)
		}
	}
	most, from := 0, 0
	for i := range times {
		j := i
		for j < len(times) && times[j].Sub(times[i]) < time.Second {
			j++
		}
		if j-i > most {
			most, from = j-i, i
		}
	}
	require.LessOrEqual(t, most, ipLimit, "requests to Bybit in one second, from replicas behind one IP: %v", sent[from:from+most])
}
