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
