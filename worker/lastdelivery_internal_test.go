package worker

// A cancel-all's last delivery reaching a worker that is stopping.

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// lastDelivery is a cancel-all's last delivery, handed to a worker that is
// stopping; it records how the worker ends it.
type lastDeliveryMsg struct {
	jetstream.Msg
	seq, delivered uint64
	body           []byte
	mu             sync.Mutex
	termed         string
}

func (m *lastDeliveryMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.seq}, NumDelivered: m.delivered, Timestamp: time.Now()}, nil
}
func (m *lastDeliveryMsg) Subject() string      { return "orders.cancel-all" }
func (m *lastDeliveryMsg) Headers() nats.Header { return nil }
func (m *lastDeliveryMsg) Data() []byte         { return m.body }
func (m *lastDeliveryMsg) TermWithReason(r string) error {
	m.mu.Lock()
	m.termed = r
	m.mu.Unlock()
	return nil
}

// A cancel-all whose earlier deliveries cancelled orders (and recorded them)
// and whose last delivery reaches a worker that is stopping is answered
// failed: that result must still name the request and list what the earlier
// deliveries cancelled ("a release on shutdown ... must not lose progress").
func TestLastDeliveryReleasedOnShutdownKeepsTheCancelAllsProgress(t *testing.T) {
	_, _, js := embedded.ConnectForTest(t)
	client, err := bybit.NewClient(bybit.Options{BaseURL: "http://127.0.0.1:1", APIKey: "k", APISecret: "s"})
	require.NoError(t, err)
	cfg := Config{
		Subjects: messages.Subjects{Stream: "ORDERS", Consumer: "c", CancelSubject: "orders.cancel", CancelAllSubject: "orders.cancel-all",
			AckSubject: "orders.cancel.ack", RejectedSubject: "orders.cancel.rejected", CancelAllProgressSubject: "orders.cancel-all.progress"},
		AckWait: time.Second, MaxDeliver: 5, MaxAckPending: 10, DuplicateWindow: time.Hour, StreamReplicas: 1,
		Concurrency: 1, RetryBudget: time.Minute, MaxAge: time.Minute, ShutdownTimeout: time.Second,
		BanPause: time.Minute, LimitShare: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	w, err := New(cfg, js, client)
	require.NoError(t, err)
	ctx := context.Background()
	// What Setup sets, without its exchange checks: the stream (which
	// captures the progress subject) and the consumer's MaxDeliver.
	scfg, err := EnsureStream(ctx, js, cfg)
	require.NoError(t, err)
	w.keepProgress = subjectCovered(scfg.Subjects, cfg.progressSubject(1))
	require.True(t, w.keepProgress)
	w.consumer.MaxDeliver = cfg.MaxDeliver

	body := []byte(`{"category":"linear","symbol":"BTCUSDT","requestId":"kill-1"}`)
	ack, err := js.Publish(ctx, cfg.CancelAllSubject, body)
	require.NoError(t, err)
	seq := ack.Sequence
	// Delivery 1 cancelled two orders and gave the request back with every
	// call recorded.
	for _, rec := range []messages.CancelAllProgress{
		{RequestSeq: seq, Run: "r1", Delivery: 1, Call: 1, Orders: []messages.OrderRef{{OrderID: "a"}, {OrderID: "b"}}},
		{RequestSeq: seq, Run: "r1", Delivery: 1, Released: true},
	} {
		data, _ := json.Marshal(rec)
		_, err := js.Publish(ctx, cfg.progressSubject(seq), data)
		require.NoError(t, err)
	}

	// The last delivery reaches this worker while it stops.
	w.sendCtx = ctx
	w.stopped.Store(true)
	m := &lastDeliveryMsg{seq: seq, delivered: 5, body: body}
	w.accept(ctx, m, time.Now())
	w.jobs.Wait()

	st, err := js.Stream(ctx, cfg.Stream)
	require.NoError(t, err)
	raw, err := st.GetLastMsgForSubject(ctx, cfg.RejectedSubject)
	require.NoError(t, err)
	r, err := messages.DecodeResult(raw.Data)
	require.NoError(t, err)
	require.Equal(t, seq, r.RequestSeq)
	require.Equal(t, messages.StatusFailed, r.Status)
	t.Logf("stored result: %s", raw.Data)
	require.Equal(t, "kill-1", r.RequestID, "the caller's requestId")
	require.Equal(t, "linear", r.Category, "the request's category")
	require.Len(t, r.Orders, 2, "the orders delivery 1 cancelled (result %s)", strconv.Quote(string(raw.Data)))
}
