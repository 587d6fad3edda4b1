package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

func TestCreatedStreamAndConsumerAreTaggedAndConfigured(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	ctx := context.Background()
	cfg, err := worker.EnsureStream(ctx, e.js, e.cfg)
	require.NoError(t, err)
	require.Equal(t, jetstream.LimitsPolicy, cfg.Retention)
	require.Equal(t, jetstream.FileStorage, cfg.Storage)
	require.Equal(t, worker.StreamMaxAge, cfg.MaxAge)
	require.Equal(t, time.Hour, cfg.Duplicates)
	require.ElementsMatch(t, []string{"orders.cancel", "orders.cancel-all", "orders.cancel.ack", "orders.cancel.rejected", "orders.cancel-all.progress.>"}, cfg.Subjects, "and the cancel-all progress records")
	require.Equal(t, worker.ManagedValue, cfg.Metadata[worker.ManagedKey])

	cons, settings, err := worker.EnsureConsumer(ctx, e.js, e.cfg)
	require.NoError(t, err)
	cc := cons.CachedInfo().Config
	require.Equal(t, []string{"orders.cancel", "orders.cancel-all"}, cc.FilterSubjects)
	require.Equal(t, jetstream.AckExplicitPolicy, cc.AckPolicy)
	require.Empty(t, cc.BackOff)
	require.Equal(t, 1000, cc.MaxAckPending)
	require.Equal(t, worker.ConsumerSettings{AckWait: 5 * time.Second, MaxDeliver: 20, PinnedTTL: 5 * time.Second}, settings)

	// A tagged stream and consumer follow the configuration at the next start.
	e.cfg.DuplicateWindow = 2 * time.Hour
	e.cfg.RejectedSubject = "orders.cancel.refused"
	e.cfg.AckWait = 7 * time.Second
	cfg, err = worker.EnsureStream(ctx, e.js, e.cfg)
	require.NoError(t, err)
	require.Equal(t, 2*time.Hour, cfg.Duplicates)
	require.Contains(t, cfg.Subjects, "orders.cancel.refused")
	_, settings, err = worker.EnsureConsumer(ctx, e.js, e.cfg)
	require.NoError(t, err)
	require.Equal(t, 7*time.Second, settings.AckWait)
}

func TestOperatorStreamIsCheckedNotChanged(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	ctx := context.Background()
	e.cfg.Stream = "OPS"
	_, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "OPS", Subjects: []string{"ops.>"}, Duplicates: 2 * time.Hour})
	require.NoError(t, err)
	e.cfg.CancelSubject, e.cfg.CancelAllSubject, e.cfg.AckSubject, e.cfg.RejectedSubject = "ops.cancel", "ops.cancel-all", "ops.cancel.ack", "other.rejected"
	_, err = worker.EnsureStream(ctx, e.js, e.cfg)
	require.ErrorContains(t, err, "does not capture other.rejected")
	require.ErrorContains(t, err, "nats stream edit OPS")

	e.cfg.RejectedSubject = "ops.cancel.rejected"
	cfg, err := worker.EnsureStream(ctx, e.js, e.cfg)
	require.NoError(t, err)
	require.Equal(t, []string{"ops.>"}, cfg.Subjects, "left unchanged")

	_, err = e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "SHORT", Subjects: []string{"short.>"}, Duplicates: 10 * time.Minute})
	require.NoError(t, err)
	e.cfg.Stream = "SHORT"
	e.cfg.CancelSubject, e.cfg.CancelAllSubject, e.cfg.AckSubject, e.cfg.RejectedSubject = "short.cancel", "short.cancel-all", "short.ack", "short.rejected"
	_, err = worker.EnsureStream(ctx, e.js, e.cfg)
	require.ErrorContains(t, err, "(10m0s) must be at least MaxAge (50m0s)")
}

func TestOperatorConsumerIsCheckedNotChanged(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	ctx := context.Background()
	inputs := []string{"orders.cancel", "orders.cancel-all"}
	cases := map[string]struct {
		cfg  jetstream.ConsumerConfig
		want string
	}{
		"backoff":    {jetstream.ConsumerConfig{FilterSubjects: inputs, AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: 5, BackOff: []time.Duration{time.Second}}, "BackOff"},
		"filter":     {jetstream.ConsumerConfig{FilterSubject: "orders.cancel", AckPolicy: jetstream.AckExplicitPolicy}, "must filter exactly"},
		"ack all":    {jetstream.ConsumerConfig{FilterSubjects: inputs, AckPolicy: jetstream.AckAllPolicy}, "explicit acks"},
		"acceptable": {jetstream.ConsumerConfig{FilterSubjects: inputs, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 9 * time.Second, MaxDeliver: 3}, ""},
	}
	for name, tc := range cases {
		tc.cfg.Durable = "ops-" + strings.ReplaceAll(name, " ", "-")
		_, err := e.js.CreateOrUpdateConsumer(ctx, e.cfg.Stream, tc.cfg)
		require.NoError(t, err, name)
		c := e.cfg
		c.Consumer = tc.cfg.Durable
		_, settings, err := worker.EnsureConsumer(ctx, e.js, c)
		if tc.want != "" {
			require.ErrorContains(t, err, tc.want, name)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, worker.ConsumerSettings{AckWait: 9 * time.Second, MaxDeliver: 3}, settings, "read back from the consumer")
	}
}

// A full stream the worker manages refuses new messages, so a publisher
// learns its cancel was not stored, and keeps every request already stored.
func TestStreamMaxBytesRefusesNewMessagesWhenFull(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	ctx := context.Background()
	e.cfg.Stream, e.cfg.Consumer = "SMALL", "small"
	e.cfg.CancelSubject, e.cfg.CancelAllSubject, e.cfg.AckSubject, e.cfg.RejectedSubject = "small.cancel", "small.cancel-all", "small.ack", "small.rejected"
	e.cfg.CancelAllProgressSubject = "small.cancel-all.progress" // not ORDERS's: streams' subjects must not overlap
	cfg, err := worker.EnsureStream(ctx, e.js, e.cfg)
	require.NoError(t, err)
	require.Equal(t, int64(-1), cfg.MaxBytes, "0 is no limit")
	require.Equal(t, jetstream.DiscardNew, cfg.Discard)

	// A tagged stream made by an earlier version (discard old, no limit)
	// takes the policy and the limit at the next start.
	old := cfg
	old.Discard = jetstream.DiscardOld
	_, err = e.js.UpdateStream(ctx, old)
	require.NoError(t, err)
	e.cfg.StreamMaxBytes = 2048
	cfg, err = worker.EnsureStream(ctx, e.js, e.cfg)
	require.NoError(t, err)
	require.Equal(t, int64(2048), cfg.MaxBytes)
	require.Equal(t, jetstream.DiscardNew, cfg.Discard)

	body := []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"` + strings.Repeat("x", 200) + `"}`)
	var stored uint64
	var refused error
	for range 100 {
		ack, err := e.js.Publish(ctx, "small.cancel", body)
		if err != nil {
			refused = err
			break
		}
		stored = ack.Sequence
	}
	require.Error(t, refused, "a full stream refuses the publish")
	require.ErrorContains(t, refused, "maximum bytes exceeded")
	s, err := e.js.Stream(ctx, "SMALL")
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.FirstSeq, "no stored request was discarded")
	require.Equal(t, stored, info.State.LastSeq)
}
