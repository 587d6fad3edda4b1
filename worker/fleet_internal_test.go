package worker

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"sync/atomic"
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

// A lone replica that pulls back to back keeps its lease from one pull to
// the next, also on a loaded host whose pulls each end late. A pull renews
// the pin as of its start, but the replica learns it only when the pull
// ends: just before a pull ends, the lease counts from the start of the one
// before. With pulls of a full second and the shortest lease (2 s: an
// AckWait of 2 s), two pulls ending 150 ms late each — measured under load:
// 1.025 s for a pull whose server expiry is 900 ms — ran the lease out, and
// the active replica gave back, unsent, everything it held (every message
// redelivered: TestThousandsOfHeldMessagesAreNotRedelivered under load).
func TestAPullingReplicaKeepsItsLeaseBetweenLatePulls(t *testing.T) {
	_, _, js := embedded.ConnectForTest(t)
	ctx := context.Background()
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "LEASE", Subjects: []string{"lease.>"}})
	require.NoError(t, err)
	const ackWait = 2 * time.Second
	cons, err := js.CreateConsumer(ctx, "LEASE", pinnedConfig(jetstream.ConsumerConfig{
		Durable: "lease", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait,
	}, DefaultPinnedTTL))
	require.NoError(t, err)
	// One message, so that the first pull pins this replica.
	_, err = js.Publish(ctx, "lease.one", []byte("x"))
	require.NoError(t, err)

	// The replica's clock: every pull ends lateBy after it would on an idle
	// host.
	const lateBy = 150 * time.Millisecond
	var late atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(late.Load())) }
	p := newPin(true, "lease", leaseOf(ackWait, DefaultPinnedTTL), now)
	const checks = 4
	held := make(chan bool, checks)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	pulls := 0
	puller{
		cons: cons, held: newHeldSet(now), max: 10, log: slog.New(slog.NewTextHandler(io.Discard, nil)), pin: p, now: now,
		accept: func(_ context.Context, msg jetstream.Msg, _ time.Time) { _ = msg.Ack() },
		pulled: func(start time.Time, err error) {
			late.Add(int64(lateBy))
			pulls++
			// Past the first two pulls (the pin's arrival, its takeover
			// window), the lease as this pull's end finds it, just before
			// it renews the pin; the contact (a flush each second) counts
			// as confirmed now.
			if pulls > 2 && p.warmUntil().IsZero() {
				held <- p.active(now())
				if len(held) == checks {
					stop()
				}
			}
			p.pulled(start, "", err)
		},
	}.run(runCtx)
	require.Len(t, held, checks)
	for range checks {
		require.True(t, <-held, "the lease (%v) ran out between two pulls of the replica that holds the pin", p.lease)
	}
}
