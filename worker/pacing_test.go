package worker_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// cancelAllsWith counts the cancel-all calls the exchange answered code.
func (e *env) cancelAllsWith(code int) int {
	n := 0
	for _, q := range e.ex.Requests() {
		if q.Path == "/v5/order/cancel-all" && q.RetCode == code {
			n++
		}
	}
	return n
}

// optionCancelAlls rests 50 orders on each of n option symbols and publishes
// one cancel-all per symbol; it returns the request sequences.
func (e *env) optionCancelAlls(n int) []uint64 {
	e.t.Helper()
	var seqs []uint64
	for i := range n {
		symbol := fmt.Sprintf("BTC-27DEC24-%d-C", 100000+i*1000)
		for range 50 {
			e.ex.AddOrder(bybittest.Order{Category: "option", Symbol: symbol})
		}
		seqs = append(seqs, e.publishAll(fmt.Sprintf(`{"category":"option","symbol":%q}`, symbol)))
	}
	return seqs
}

// cancelledOptionCancelAlls publishes three option cancel-alls
// (optionCancelAlls), starts a worker and requires each cancelled with its 50
// orders listed; it returns their results.
func (e *env) cancelledOptionCancelAlls() []messages.Result {
	e.t.Helper()
	seqs := e.optionCancelAlls(3)
	e.start()
	got := e.waitResults(len(seqs))
	out := make([]messages.Result, 0, len(seqs))
	for _, s := range seqs {
		require.Equal(e.t, messages.StatusCancelled, got[s].Status, "%+v", got[s])
		require.Len(e.t, got[s].Orders, 50)
		out = append(out, got[s])
	}
	return out
}

// A kill switch fires several cancel-alls at once. Bybit allows one option
// cancel-all a second per UID: the worker paces them to that (the default
// limits know it), and a worker told the endpoint is unlimited still waits
// for the reset each 10006 names instead of retrying at once — the storm of
// 10006 answers would spend the process's IP budget mid kill switch.
func TestCancelAllIsPacedAndWaitsOutRateLimits(t *testing.T) {
	t.Parallel()
	for name, limit := range map[string]int{"default limits": -1, "unlimited in the worker": 0} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, bybittest.Options{})
			if limit >= 0 {
				e.cfg.Limits["cancel-all/option"] = limit
			}
			for _, r := range e.cancelledOptionCancelAlls() {
				require.False(t, r.Ambiguous, "a 10006 proves nothing was cancelled")
			}
			limited := e.cancelAllsWith(10006)
			if limit < 0 {
				require.LessOrEqual(t, limited, 1, "paced to Bybit's 1/s, a cancel-all meets no 10006 (one at most, on a window's edge)")
			} else {
				// Each round after a reset, one of those waiting gets the
				// budget: 2 + 1 answers of 10006, and a margin of as many.
				require.LessOrEqual(t, limited, 6, "10006 waited out until the reset, not retried at once")
			}
			e.settled()
		})
	}
}

// Bybit's clock runs 3 s ahead of or behind the worker's, and the worker
// learns the cancel-all budget only from Bybit's answers: each wait ends at
// the reset Bybit named, read in the worker's clock — not 3 s late, and not
// 3 s early into another 10006.
func TestRateLimitWaitsFollowBybitsClock(t *testing.T) {
	t.Parallel()
	for _, skew := range []time.Duration{3 * time.Second, -3 * time.Second} {
		t.Run(skew.String(), func(t *testing.T) {
			t.Parallel()
			e := setup(t, bybittest.Options{ClockOffset: skew})
			e.cfg.Limits["cancel-all/option"] = 0
			e.cancelledOptionCancelAlls()
			require.LessOrEqual(t, e.cancelAllsWith(10006), 6, "every wait ended at the reset, not before it")
			require.Zero(t, e.cancelAllsWith(10002), "signed in Bybit's clock throughout")
		})
	}
}

// After an IP ban's pause, only a request Bybit answered may lift the ban.
// When the dispatcher holding the probe has nothing left to send (its
// request grew older than WORKER_MAX_AGE during the pause), the worker stays
// paused until a later request goes through.
func TestBanIsLiftedOnlyByAnAnsweredRequest(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.BanPause = 3 * time.Second
	e.cfg.MaxAge = 2 * time.Second // shorter than the pause: the first request expires in it
	r := e.start()
	e.ex.SetBanned(true)
	first := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	seqA := e.publish(cancelBody(first, false, ""), "")
	a := e.waitResults(1)[seqA]
	require.Equal(t, messages.StatusFailed, a.Status, "%+v", a)
	require.Contains(t, a.LastError, "WORKER_MAX_AGE")
	require.NotContains(t, e.logs.String(), "IP ban over", "no request went through")
	ready, why := r.w.Ready()
	require.False(t, ready, "still paused: nothing has shown the ban is over")
	require.Contains(t, why, "ban")

	e.ex.SetBanned(false)
	second := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	seqB := e.publish(cancelBody(second, false, ""), "")
	b := e.waitResults(2)[seqB]
	require.Equal(t, messages.StatusCancelled, b.Status, "%+v", b)
	require.Eventually(t, func() bool { ok, _ := r.w.Ready(); return ok }, waitFor, 5*time.Millisecond)
	require.Equal(t, 1, strings.Count(e.logs.String(), "IP ban over: the probe request went through"))
	e.settled()
}
