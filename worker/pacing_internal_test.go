package worker

import (
	"context"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

// A 10006 holds the request until the reset Bybit named, read in the local
// clock whichever way Bybit's clock is off: not 3 s longer when it is ahead,
// not a short backoff into the same exhausted window when it is behind.
func TestRateLimitedDecisionWaitsUntilBybitsReset(t *testing.T) {
	t.Parallel()
	const window = time.Second
	for _, skew := range []time.Duration{3 * time.Second, -3 * time.Second} {
		t.Run(skew.String(), func(t *testing.T) {
			t.Parallel()
			ex := bybittest.New(bybittest.Options{AutoCreate: true, ClockOffset: skew, Window: window, Limits: map[string]int{"cancel/linear": 1}})
			srv := httptest.NewServer(ex)
			t.Cleanup(srv.Close)
			c, err := bybit.NewClient(bybit.Options{BaseURL: srv.URL, APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret})
			require.NoError(t, err)
			_, err = c.SyncClock(t.Context())
			require.NoError(t, err)
			_, err = c.CancelOrder(t.Context(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-1"})
			require.NoError(t, err)
			_, err = c.CancelOrder(t.Context(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-2"})
			require.Equal(t, bybit.ClassRateLimited, bybit.ClassOf(err))

			w := &Worker{now: time.Now, cfg: Config{MaxAge: time.Hour, RetryBudget: time.Minute}}
			j := &job{lane: newLane(laneKey{account: "a", category: "linear"}, nil, nil, nil), heldMsg: heldMsg{stored: time.Now()}}
			d := w.decide(j, answered(bybit.CancelOrderResult{}, err))
			require.Equal(t, actRequeue, d.action)
			var counted time.Time // when the exchange counted the first cancel, in the local clock
			for _, q := range ex.Requests() {
				if q.Path == "/v5/order/cancel" && q.RetCode == 0 {
					counted = q.Time
				}
			}
			require.WithinDuration(t, counted.Add(window), d.rateLimitReset, 100*time.Millisecond,
				"the window of the first cancel ends a window after the exchange counted it")
			require.Positive(t, d.delay, "the decision carries the wait")
			require.WithinDuration(t, d.rateLimitReset, time.Now().Add(d.delay), 100*time.Millisecond)
		})
	}
}

// A paced call (cancel-all, a confirmation lookup) that finds its budget
// full must not miss the room that frees before it asks how long to wait:
// nothing else may ever signal it.
func TestPacedCallDoesNotMissRoomFreedInBetween(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	var calls atomic.Int32
	var at atomic.Int64 // the clock, from t0
	now := func() time.Time {
		calls.Add(1)
		return t0.Add(time.Duration(at.Load()))
	}
	p := newPacer(Rate{N: 1, Per: time.Second}, now)
	release, _, err := p.acquire(t.Context())
	require.NoError(t, err)
	release() // answered at t0: free again at t0+1s
	at.Store(int64(500 * time.Millisecond))
	require.Nil(t, p.reserve(1), "full at t0+0.5s")
	// The slot expires between finding the budget full and asking for room.
	p.now = func() time.Time {
		if calls.Add(1) > 2 {
			return t0.Add(1500 * time.Millisecond)
		}
		return t0.Add(500 * time.Millisecond)
	}
	calls.Store(0)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	release, _, err = p.acquire(ctx)
	require.NoError(t, err, "waited for a change that had already happened")
	release()
}

// A slot that expires here while a later request is in flight is still in
// the window the exchange counted for that request: its headers then say no
// more than this process sent, and no request of another client may be
// booked for it (each booked phantom costs a whole window at the end of a
// burst).
func TestPacerBooksNoOtherClientForItsOwnExpiredSlot(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	var at atomic.Int64 // the clock, from t0
	p := newPacer(Rate{N: 2, Per: time.Second}, func() time.Time { return t0.Add(time.Duration(at.Load())) })
	p.learn = true
	a, _, err := p.acquire(t.Context()) // sent and answered at t0
	require.NoError(t, err)
	a()
	at.Store(int64(900 * time.Millisecond))
	b, _, err := p.acquire(t.Context()) // sent at t0+0.9s
	require.NoError(t, err)
	at.Store(int64(1050 * time.Millisecond))
	free, _, _ := p.room() // a's slot has expired here
	require.Equal(t, 1, free)
	// b's answer: the exchange counted a (arrived at t0) and b in b's window.
	at.Store(int64(1100 * time.Millisecond))
	p.observe(bybit.RateLimit{Known: true, Limit: 2, Remaining: 0, Reset: t0.Add(time.Second)}, t0.Add(900*time.Millisecond))
	b()
	at.Store(int64(1200 * time.Millisecond))
	free, _, _ = p.room()
	require.Equal(t, 1, free, "only b is in the window: nothing of another client to book")
}
