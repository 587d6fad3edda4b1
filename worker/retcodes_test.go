package worker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// retCode 429 in the body ("The trading service is experiencing a high
// server load. Please retry") comes when a kill switch fires: it is retried,
// and the cancel may have applied.
func TestHighServerLoad429IsRetriedAndAmbiguous(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.ex.InjectFault(bybittest.Fault{RetCode: 429, RetMsg: "The trading service is experiencing a high server load. Please retry if you encounter this issue."})
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	r := e.startedResult(o, false, "")
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	require.Equal(t, 2, r.Attempts)
	require.True(t, r.Ambiguous, "a 429 under load may come after the cancel applied")
}

// Spot answers a cancel of an order that filled, or whose cancel finished,
// with its own codes: the order is not open.
func TestSpotFilledAndFinishedCodesAreNotOpen(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	seqs := map[uint64]int{}
	for _, code := range []int{170139, 170190} {
		o := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT"})
		e.ex.InjectFault(bybittest.Fault{Match: func(_, _, id, _ string) bool { return id == o.OrderID }, RetCode: code, RetMsg: "m"})
		seqs[e.publish(cancelBody(o, false, ""), "")] = code
	}
	e.start()
	got := e.waitResults(len(seqs))
	for seq, code := range seqs {
		require.Equal(t, messages.StatusNotOpen, got[seq].Status, "%d: %+v", code, got[seq])
		require.Equal(t, code, *got[seq].RetCode)
		require.Equal(t, 1, got[seq].Attempts)
	}
}

// A 403 that is not Bybit's "access too frequent" (its CDN refusing a region,
// with a body that varies) pauses every request like the IP ban, logs the
// body once, and one probe after the pause decides; the cancel is not
// answered rejected.
func TestForbiddenWithoutEnvelopePausesLikeABan(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	const pause = 300 * time.Millisecond
	e.cfg.BanPause = pause
	const body = "<html><h1>403 ERROR</h1>The Amazon CloudFront distribution is configured to block access from your country.</html>"
	e.ex.InjectFault(bybittest.Fault{Status: 403, Body: body})
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	r := e.startedResult(o, false, "")
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	require.False(t, r.Ambiguous, "a 403 refusal was not applied")
	cancels := e.cancels()
	require.Len(t, cancels, 2, "the refused request, then the probe after the pause")
	require.Equal(t, 403, cancels[0].HTTPStatus)
	require.GreaterOrEqual(t, cancels[1].Time.Sub(cancels[0].Time), pause, "no request during the pause")
	require.Equal(t, 1, strings.Count(e.logs.String(), "CloudFront distribution"), "the body is logged once:\n%s", e.logs.String())
}

// 10018 is Bybit's IP-level limit (struck out in its table, still mapped by
// ccxt): every request of the process waits, not only this budget's, and the
// cancel is retried, not rejected.
func TestIPRateLimit10018SlowsEveryRequest(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.IPLimit = worker.Rate{N: 1000, Per: time.Second}
	lin := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	spot := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT"})
	e.ex.InjectFault(bybittest.Fault{Match: func(cat, _, _, _ string) bool { return cat == "linear" }, RetCode: 10018, RetMsg: "Exceeded the IP Rate Limit."})
	linSeq := e.publish(cancelBody(lin, false, ""), "")
	r := e.start()
	// The worker has blocked the IP once it counts the 10018 (the
	// exchange's log shows only that the answer left).
	require.Eventually(t, func() bool { return r.w.Stats().RateLimited.Load() == 1 }, waitFor, 5*time.Millisecond)
	require.Equal(t, 1, e.requestsWith(10018))
	spotSeq := e.publish(cancelBody(spot, false, ""), "")
	got := e.waitResults(2)
	require.Equal(t, messages.StatusCancelled, got[linSeq].Status, "%+v", got[linSeq])
	require.False(t, got[linSeq].Ambiguous, "a 10018 refusal was not applied")
	require.Equal(t, messages.StatusCancelled, got[spotSeq].Status, "%+v", got[spotSeq])
	var limited, spotSent time.Time
	for _, q := range e.ex.Requests() {
		switch {
		case q.RetCode == 10018:
			limited = q.Time
		case q.Category == "spot" && isCancel(q):
			spotSent = q.Time
		}
	}
	// The backoff after a limit without a reset time starts at 200 ms ±50 %.
	require.GreaterOrEqual(t, spotSent.Sub(limited), 100*time.Millisecond, "another category's cancel waited too")
}
