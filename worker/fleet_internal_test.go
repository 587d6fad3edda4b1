package worker

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// The lease must end before the server can pin
// another replica, i.e. before the consumer's PinnedTTL. The worker computes
// it from its own NATS_PINNED_TTL, not from the consumer it runs on: on an
// operator's consumer with the priority group and a shorter PinnedTTL (or a
// managed one another replica updated), the replica goes on starting
// requests after the server may have pinned another one.
func TestTheLeaseFollowsTheConsumersPinnedTTL(t *testing.T) {
	_, _, js := embedded.ConnectForTest(t)
	srv := httptest.NewServer(bybittest.New(bybittest.Options{}))
	t.Cleanup(srv.Close)
	client, err := bybit.NewClient(bybit.Options{BaseURL: srv.URL, APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret, Timeout: 5 * time.Second})
	require.NoError(t, err)
	cfg := Config{
		Subjects: messages.Subjects{Stream: "ORDERS", Consumer: "ops-cancels", CancelSubject: "orders.cancel", CancelAllSubject: "orders.cancel-all",
			AckSubject: "orders.cancel.ack", RejectedSubject: "orders.cancel.rejected", CancelAllProgressSubject: "orders.cancel-all.progress"},
		AckWait: 30 * time.Second, MaxDeliver: 20, MaxAckPending: 100, DuplicateWindow: time.Hour, StreamReplicas: 1,
		Concurrency: 4, RetryBudget: time.Minute, MaxAge: time.Minute, ShutdownTimeout: time.Second,
		Limits: DefaultLimits(), BanPause: time.Minute, LimitShare: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	ctx := context.Background()
	_, err = EnsureStream(ctx, js, cfg)
	require.NoError(t, err)
	const ttl = 3 * time.Second // what the operator gave the consumer
	_, err = js.CreateConsumer(ctx, cfg.Stream, jetstream.ConsumerConfig{
		Durable: cfg.Consumer, FilterSubjects: []string{cfg.CancelSubject, cfg.CancelAllSubject},
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 100,
		PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{PriorityGroup}, PinnedTTL: ttl,
	})
	require.NoError(t, err)
	w, err := New(cfg, js, client)
	require.NoError(t, err)
	require.NoError(t, w.Setup(ctx))
	require.True(t, w.fleet.cancel.on, "the operator's consumer has the group")
	require.Less(t, w.fleet.cancel.lease, ttl,
		"the lease (%v) outlasts the consumer's PinnedTTL (%v): the server may pin another replica while this one still sends", w.fleet.cancel.lease, ttl)
}
