package worker

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// redelivery is a delivered message as JetStream hands it over; it records
// what the worker does with it.
type redelivery struct {
	jetstream.Msg // nil: any method the test does not expect panics
	seq           uint64
	delivered     uint64
	doubleAcked   bool
}

func (m *redelivery) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.seq}, NumDelivered: m.delivered, Timestamp: time.Now()}, nil
}
func (m *redelivery) Subject() string                 { return "orders.cancel" }
func (m *redelivery) Headers() nats.Header            { return nil }
func (m *redelivery) DoubleAck(context.Context) error { m.doubleAcked = true; return nil }
func (m *redelivery) Data() []byte {
	return []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"1"}`)
}

// A redelivered message whose result this process already stored (its ack
// was lost) is acked again without a second exchange call.
func TestRedeliveryOfAnAnsweredSequenceIsAckedWithoutACall(t *testing.T) {
	client, err := bybit.NewClient(bybit.Options{BaseURL: "http://127.0.0.1:1", APIKey: "k", APISecret: "s"})
	require.NoError(t, err)
	w, err := New(Config{
		Subjects: messages.Subjects{Stream: "ORDERS", Consumer: "c", CancelSubject: "orders.cancel", CancelAllSubject: "orders.cancel-all",
			AckSubject: "orders.cancel.ack", RejectedSubject: "orders.cancel.rejected", CancelAllProgressSubject: "orders.cancel-all.progress"},
		AckWait: time.Second, MaxDeliver: 5, MaxAckPending: 10, DuplicateWindow: time.Hour, StreamReplicas: 1,
		Concurrency: 1, RetryBudget: time.Minute, MaxAge: time.Minute, ShutdownTimeout: time.Second,
		BanPause: time.Minute, LimitShare: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, nil, client)
	require.NoError(t, err)
	w.answered.put(42, 1)

	m := &redelivery{seq: 42, delivered: 2}
	w.accept(context.Background(), m, time.Now())
	require.True(t, m.doubleAcked, "acked again")
	held, _ := w.held.len()
	require.Zero(t, held, "not held: no exchange call will be made")
	require.Empty(t, w.lanes, "nothing was queued for the exchange")
	require.EqualValues(t, 1, w.Stats().Redelivered.Load())

	// The memory is bounded: the oldest sequences are forgotten first.
	mem := newSeqMemory(3)
	for seq := range uint64(5) {
		mem.put(seq+1, 1)
	}
	_, first := mem.get(1)
	_, last := mem.get(5)
	require.False(t, first)
	require.True(t, last)
}
