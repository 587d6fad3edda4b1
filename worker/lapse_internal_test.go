package worker

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// A replica whose lease lapsed while the server still pins it gives its
// cancels back for the other replicas; the server hands them to this
// replica again, the only one pinned. Given back at once, a cancel came
// straight back into the replica's own open pull, again and again, and its
// last delivery answered it failed, unsent: 20 deliveries within half a
// second of lapse. Given back after one pull, it comes back at most once
// during the lapse, and is cancelled once the lease is back.
func TestALeaseLapseWhileStillPinnedDoesNotBurnTheCancelsDeliveries(t *testing.T) {
	t.Parallel()
	_, _, js := embedded.ConnectForTest(t)
	ex := bybittest.New(bybittest.Options{AutoCreate: true})
	srv := httptest.NewServer(ex)
	t.Cleanup(srv.Close)
	client, err := bybit.NewClient(bybit.Options{BaseURL: srv.URL, APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret, Timeout: 5 * time.Second})
	require.NoError(t, err)

	cfg := DefaultConfig()
	cfg.Confirm, cfg.ConfirmedSubject, cfg.ConfirmTimeout = false, "", 0
	cfg.SyncCancelSubject, cfg.SyncCancelAllSubject, cfg.SyncMaxTimeout = "", "", 0
	cfg.IPLimit, cfg.StreamMaxBytes = Rate{}, 0
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	_, err = EnsureStream(ctx, js, cfg)
	require.NoError(t, err)
	w, err := New(cfg, js, client)
	require.NoError(t, err)
	require.NoError(t, w.Setup(ctx))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	t.Cleanup(func() { stop(); require.NoError(t, <-done) })

	// Active: a first cancel pins this replica and is answered.
	_, err = js.Publish(ctx, cfg.CancelSubject, []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"warm"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return w.fleet.mayStart() && w.stats.Received.Load() >= 1 }, 30*time.Second, 5*time.Millisecond)

	// The fault: for half a second no contact is confirmed (a flush
	// slower than the lease), so the lease lapses; the server's pin stays.
	const lapse = 500 * time.Millisecond
	faultOver := make(chan struct{})
	go func() {
		defer close(faultOver)
		end := time.After(lapse)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			w.fleet.mu.Lock()
			w.fleet.contact = time.Time{}
			w.fleet.mu.Unlock()
			select {
			case <-end:
				return
			case <-tick.C:
			}
		}
	}()
	require.Eventually(t, func() bool { return !w.fleet.mayStart() }, 30*time.Second, time.Millisecond)
	before := w.stats.Received.Load()
	pub, err := js.Publish(ctx, cfg.CancelSubject, []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"lapsed"}`))
	require.NoError(t, err)
	<-faultOver
	require.LessOrEqual(t, w.stats.Received.Load()-before, int64(2), "deliveries of the cancel during the lapse")

	var got messages.Result
	require.Eventually(t, func() bool {
		m, err := js.Stream(ctx, cfg.Stream)
		if err != nil {
			return false
		}
		raw, err := m.GetLastMsgForSubject(ctx, cfg.AckSubject)
		if err != nil {
			return false
		}
		if got, err = messages.DecodeResult(raw.Data); err != nil {
			return false
		}
		return got.RequestSeq == pub.Sequence
	}, 30*time.Second, 10*time.Millisecond)
	require.Equal(t, messages.StatusCancelled, got.Status, "%+v", got)
}
