package worker_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

func TestCancelsInEveryCategoryByOrderIDAndOrderLinkID(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	symbols := map[string]string{"spot": "BTCUSDT", "linear": "BTCUSDT", "inverse": "BTCUSD", "option": "BTC-27DEC24-100000-C"}
	want := map[uint64]bybittest.Order{}
	for _, cat := range messages.Categories {
		for _, byLink := range []bool{false, true} {
			o := e.ex.AddOrder(bybittest.Order{Category: cat, Symbol: symbols[cat], OrderLinkID: fmt.Sprintf("%s-link-%v", cat, byLink)})
			seq := e.publish(cancelBody(o, byLink, fmt.Sprintf("%s-%v", cat, byLink)), "")
			want[seq] = o
		}
	}
	e.start()
	got := e.waitResults(len(want))
	for seq, o := range want {
		r := got[seq]
		require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
		require.Equal(t, o.Category, r.Category)
		require.Equal(t, o.Symbol, r.Symbol)
		require.Equal(t, o.OrderID, r.OrderID, "Bybit's orderId is echoed")
		require.Equal(t, o.OrderLinkID, r.OrderLinkID, "Bybit's orderLinkId is echoed")
		require.Equal(t, 1, r.Attempts)
		require.False(t, r.Ambiguous)
		require.NotNil(t, r.SentAt)
		require.NotZero(t, r.ExchangeTime)
		require.NotZero(t, r.RequestTime)
		require.Equal(t, 0, *r.RetCode)
		st, _ := e.ex.Order(o.Category, o.OrderID)
		require.Equal(t, "Cancelled", st.Status)
	}
	e.requireSettledWith(len(want))
}

func TestRequestIDComesFromBodyHeaderOrSequence(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true})
	body := func(id string) map[string]string {
		return map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": "o-" + id, "requestId": id}
	}
	fromBody := e.publish(body("same-id"), "hdr-1")
	fromBodyAgain := e.publish(body("same-id"), "")
	fromHeader := e.publish(`{"category":"linear","symbol":"BTCUSDT","orderId":"o-h"}`, "hdr-2")
	fromSeq := e.publish(`{"category":"linear","symbol":"BTCUSDT","orderId":"o-s"}`, "")
	e.start()
	got := e.waitResults(4)
	require.Equal(t, "same-id", got[fromBody].RequestID)
	require.Equal(t, "same-id", got[fromBodyAgain].RequestID, "a repeated requestId still gets its own result")
	require.Equal(t, "hdr-2", got[fromHeader].RequestID)
	require.Equal(t, fmt.Sprintf("ORDERS:%d", fromSeq), got[fromSeq].RequestID)
	e.requireSettledWith(4)
}

func TestRateLimitedRequestsWaitForTheReset(t *testing.T) {
	t.Parallel()
	for _, omitReset := range []bool{false, true} {
		t.Run(fmt.Sprintf("omitResetHeader=%v", omitReset), func(t *testing.T) {
			t.Parallel()
			e := setup(t, bybittest.Options{AutoCreate: true, OmitResetHeader: omitReset, OmitLimitHeader: true,
				Limits: map[string]int{"cancel/linear": 5, "cancel-batch/linear": 5}})
			// The worker believes in higher limits than the exchange
			// enforces, so only 10006 answers can pace it.
			e.cfg.Limits = map[string]int{"cancel/linear": 100, "cancel-batch/linear": 100}
			const n = 15
			e.publishNumbered(n)
			r := e.start()
			got := e.waitResults(n)
			for _, res := range got {
				require.Equal(t, messages.StatusCancelled, res.Status, "%+v", res)
				require.False(t, res.Ambiguous, "a 10006 proves the cancel was not applied")
			}
			require.Positive(t, e.requestsWith(10006))
			require.Positive(t, r.w.Stats().RateLimited.Load())
			e.requireSettledWith(n)
		})
	}
}

func TestClockSkewIsResyncedAndRetried(t *testing.T) {
	t.Parallel()
	for _, skew := range []time.Duration{20 * time.Second, -20 * time.Second} {
		t.Run(skew.String(), func(t *testing.T) {
			t.Parallel()
			e := setup(t, bybittest.Options{})
			e.start() // synced with the exchange's clock at start
			e.ex.SetClockOffset(skew)
			o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
			seq := e.publish(cancelBody(o, false, ""), "")
			r := e.waitResults(1)[seq]
			require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
			require.Equal(t, 2, r.Attempts)
			require.False(t, r.Ambiguous)
			require.Equal(t, 1, e.requestsWith(10002))
		})
	}
}

func TestTransientFailuresAreRetried(t *testing.T) {
	t.Parallel()
	cases := map[string]bybittest.Fault{
		"502 HTML":       {Status: 502, Body: "<html><h1>502 Bad Gateway</h1></html>"},
		"503 HTML":       {Status: 503, Body: "<html>Service Unavailable</html>"},
		"10016":          {RetCode: 10016, RetMsg: "Server error, service restarting"},
		"timeout":        {Delay: time.Minute},
		"connection cut": {Hangup: true},
	}
	for name, fault := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, bybittest.Options{})
			e.timeout = 500 * time.Millisecond
			o := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT"})
			e.ex.InjectFault(fault, fault)
			r := e.startedResult(o, false, "")
			require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
			require.Equal(t, 3, r.Attempts)
			require.True(t, r.Ambiguous, "the failed attempts may have reached Bybit")
			e.requireSettledWith(1)
		})
	}
}

func TestLostResponseEndsNotOpenAndAmbiguous(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "lost-1"})
	e.ex.InjectFault(bybittest.Fault{Apply: true, Hangup: true})
	r := e.startedResult(o, true, "lost")
	require.Equal(t, messages.StatusNotOpen, r.Status, "%+v", r)
	require.True(t, r.Ambiguous, "the first attempt's answer was lost after it was applied")
	require.Equal(t, 110001, *r.RetCode)
	require.Equal(t, 2, r.Attempts)
	st, _ := e.ex.Order("linear", o.OrderID)
	require.Equal(t, "Cancelled", st.Status)
}

func TestPermanentRetCodeIsRejected(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	o := e.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT"})
	e.ex.InjectFault(bybittest.Fault{RetCode: 170145, RetMsg: "This order type does not support cancellation"})
	r := e.startedResult(o, false, "")
	require.Equal(t, messages.StatusRejected, r.Status)
	require.Equal(t, 170145, *r.RetCode)
	require.Equal(t, "This order type does not support cancellation", r.RetMsg)
	require.Equal(t, 1, r.Attempts)
	require.False(t, r.Ambiguous)
	e.settled()
}

func TestNotOpenOrder(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	seq := e.publish(`{"category":"spot","symbol":"BTCUSDT","orderId":"gone"}`, "")
	e.start()
	r := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusNotOpen, r.Status)
	require.Equal(t, 170213, *r.RetCode)
	require.False(t, r.Ambiguous, "a first delivery's first attempt is not ambiguous")
}

func TestIPBanPausesEveryRequest(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	const pause = time.Second
	e.cfg.BanPause = pause
	e.cfg.Concurrency = 1
	e.start()
	e.ex.SetBanned(true)
	var seqs []uint64
	for _, cat := range []string{"linear", "spot", "linear"} {
		o := e.ex.AddOrder(bybittest.Order{Category: cat, Symbol: "BTCUSDT"})
		seqs = append(seqs, e.publish(cancelBody(o, false, ""), ""))
	}
	// The first 403 starts the ban; after the pause one probe goes out and
	// is banned again; after the next pause the probe succeeds.
	require.Eventually(t, func() bool { return e.requestsWith(-1) >= 2 }, waitFor, 5*time.Millisecond)
	e.ex.SetBanned(false)
	got := e.waitResults(len(seqs))
	for _, s := range seqs {
		require.Equal(t, messages.StatusCancelled, got[s].Status)
	}
	cancels := e.cancels()
	require.Len(t, cancels, 5, "one banned request, one banned probe, then the three cancels")
	require.Equal(t, 403, cancels[0].HTTPStatus)
	require.Equal(t, 403, cancels[1].HTTPStatus)
	require.GreaterOrEqual(t, cancels[1].Time.Sub(cancels[0].Time), pause, "no request during the pause")
	require.GreaterOrEqual(t, cancels[2].Time.Sub(cancels[1].Time), pause, "no request during the second pause")
	for _, q := range cancels[2:] {
		require.Equal(t, 0, q.RetCode)
	}
}

func TestRedeliveredAnsweredRequestGetsNoSecondResult(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	ctx := context.Background()
	_, err := worker.EnsureStream(ctx, e.js, e.cfg)
	require.NoError(t, err)
	cons, _, err := worker.EnsureConsumer(ctx, e.js, e.cfg)
	require.NoError(t, err)
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	seq := e.publish(cancelBody(o, false, "r-1"), "")

	// An earlier worker took the message, published its result, and died
	// before its ack arrived.
	e.storedByADeadWorker(cons, messages.Result{RequestID: "r-1", RequestSeq: seq, Status: messages.StatusCancelled, Category: "linear", Symbol: "BTCUSDT", OrderID: o.OrderID, Attempts: 1})

	r := e.start()
	e.requireSettledWith(1, "the redelivery added no second result")
	require.EqualValues(t, 1, r.w.Stats().Redelivered.Load())
	got := e.waitResults(1)
	require.Equal(t, 1, got[seq].Attempts, "the stored result is the first one")
}

func TestSpotIsNotDelayedByALinearBurst(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true})
	const burst = 30
	for i := range burst {
		e.publish(map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": fmt.Sprint("l-", i)}, "")
	}
	e.publish(`{"category":"spot","symbol":"BTCUSDT","orderId":"the-spot-one"}`, "")
	e.start()
	e.waitResults(burst + 1)
	spotAt, lastLinearAt := -1, -1
	for i, q := range e.ex.Requests() {
		switch {
		case q.OrderID == "the-spot-one":
			spotAt = i
		case q.Category == "linear" && q.RetCode == 0:
			lastLinearAt = i
		}
	}
	require.GreaterOrEqual(t, spotAt, 0)
	require.Less(t, spotAt, lastLinearAt, "the spot cancel went out while the linear burst was still waiting for budget")
	require.Zero(t, e.requestsWith(10006), "the worker paced itself to the documented limit")
}

func TestInvalidMessagesAreAnsweredAndTerminated(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	big := `{"category":"linear","symbol":"BTCUSDT","orderId":"1","requestId":"` + strings.Repeat("x", 900_000) + `"}`
	bodies := map[string]string{
		"not json":         "cancel all of it",
		"empty":            "",
		"lower-case":       `{"category":"linear","symbol":"btcusdt","orderId":"1","requestId":"lc-1"}`,
		"invalid utf8":     "{\"category\":\"linear\",\"symbol\":\"BTCUSDT\",\"orderId\":\"\xfe\"}",
		"duplicate keys":   `{"category":"linear","symbol":"BTCUSDT","orderId":"1","orderId":"2"}`,
		"trailing data":    `{"category":"linear","symbol":"BTCUSDT","orderId":"1"}{"x":1}`,
		"deeply nested":    `{"category":` + strings.Repeat("[", 50000) + strings.Repeat("]", 50000) + `}`,
		"near max payload": big,
	}
	seqs := map[string]uint64{}
	for name, b := range bodies {
		seqs[name] = e.publish(b, "")
	}
	e.start()
	got := e.waitResults(len(bodies))
	for name, seq := range seqs {
		r := got[seq]
		require.Equal(t, messages.StatusInvalid, r.Status, name)
		require.NotEmpty(t, r.Error, name)
		sum := sha256.Sum256([]byte(bodies[name]))
		require.Equal(t, hex.EncodeToString(sum[:]), r.PayloadSHA256, name)
		require.Equal(t, len(bodies[name]), r.PayloadSize, name)
		require.LessOrEqual(t, len(r.PayloadBase64), base64.StdEncoding.EncodedLen(messages.MaxPayloadKept), name)
		require.Zero(t, r.Attempts, "never sent")
	}
	require.Equal(t, "lc-1", got[seqs["lower-case"]].RequestID, "the requestId of an invalid body is kept when it can be read")
	require.Zero(t, e.cancelRequests(), "nothing invalid reaches the exchange")
	e.requireSettledWith(len(bodies))
}

func TestHeldMessageOutlivesAckWaitWithoutRedelivery(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.AckWait = time.Second
	e.timeout = 10 * time.Second
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	e.ex.InjectFault(bybittest.Fault{Delay: 3500 * time.Millisecond})
	seq := e.publish(cancelBody(o, false, ""), "")
	r := e.start()
	res := e.waitResults(1)[seq]
	require.Equal(t, messages.StatusCancelled, res.Status)
	require.EqualValues(t, 1, res.Deliveries)
	require.Zero(t, r.w.Stats().Redelivered.Load(), "heartbeats kept the message from being redelivered")
	require.EqualValues(t, 1, r.w.Stats().Received.Load())
}

func TestTooOldRequestFailsAndIsTerminated(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.MaxAge = time.Second
	e.cfg.RetryBudget = time.Hour
	for range 100 {
		e.ex.InjectFault(bybittest.Fault{Status: 503, Body: "down"})
	}
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	r := e.startedResult(o, false, "")
	require.Equal(t, messages.StatusFailed, r.Status)
	require.Contains(t, r.LastError, "WORKER_MAX_AGE")
	require.Contains(t, r.LastError, "503")
	require.True(t, r.Ambiguous)
	e.requireSettledWith(1)
}

func TestRetryBudgetReleasesForALaterDelivery(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.RetryBudget = 200 * time.Millisecond
	for range 4 {
		e.ex.InjectFault(bybittest.Fault{RetCode: 10016, RetMsg: "restarting"})
	}
	o := e.ex.AddOrder(bybittest.Order{Category: "inverse", Symbol: "BTCUSD"})
	r := e.startedResult(o, false, "")
	require.Equal(t, messages.StatusCancelled, r.Status)
	require.GreaterOrEqual(t, r.Deliveries, uint64(2), "the message was released and delivered again")
	require.True(t, r.Ambiguous)
	e.settled()
}
