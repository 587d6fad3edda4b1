package bybit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

// X-Bapi-Limit-Reset-Timestamp is Bybit's clock. A caller compares the reset
// with its own clock, so the client hands it over converted through the
// measured offset: with Bybit 3 s ahead a wait must not last 3 s longer, with
// Bybit 3 s behind it must not end before the window has rolled.
func TestRateLimitResetIsInTheLocalClock(t *testing.T) {
	t.Parallel()
	for _, skew := range []time.Duration{3 * time.Second, -3 * time.Second} {
		t.Run(skew.String(), func(t *testing.T) {
			t.Parallel()
			const window = time.Second
			f := setup(t, bybittest.Options{AutoCreate: true, ClockOffset: skew, Window: window,
				Limits: map[string]int{"cancel/linear": 1}}, 5*time.Second)
			off, err := f.client.SyncClock(context.Background())
			require.NoError(t, err)
			require.InDelta(t, skew.Seconds(), off.Seconds(), 0.5, "the offset is measured")

			before := time.Now()
			res, err := f.client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-1"})
			require.NoError(t, err)
			after := time.Now()
			// Not exhausted: the reset is "now", in the local clock.
			require.WithinRange(t, res.RateLimit.Reset, before.Add(-500*time.Millisecond), after.Add(500*time.Millisecond))

			_, err = f.client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-2"})
			require.Equal(t, bybit.ClassRateLimited, bybit.ClassOf(err), "%v", err)
			rl, ok := bybit.RateLimitOf(err)
			require.True(t, ok)
			// Exhausted: the window of the first cancel ends one window after
			// it was counted, in the local clock.
			require.WithinRange(t, rl.Reset, before.Add(window-500*time.Millisecond), after.Add(window+500*time.Millisecond))
		})
	}
}
