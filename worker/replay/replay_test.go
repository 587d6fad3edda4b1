package replay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/replay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 30 * time.Second

var cfg = replay.Config{
	Stream: "ORDERS", Consumer: "cancel-worker",
	CancelSubject: "orders.cancel", CancelAllSubject: "orders.cancel-all",
	AckSubject: "orders.cancel.ack", RejectedSubject: "orders.cancel.rejected",
}

// history is a stream written as the worker would have written it, with
// its consumer left in a known state.
type history struct {
	t    *testing.T
	js   jetstream.JetStream
	cons jetstream.Consumer
	seqs map[string]uint64 // requestId → stream sequence
}

func newHistory(t *testing.T) *history {
	t.Helper()
	_, _, js := embedded.ConnectForTest(t)
	wc := worker.Config{
		Subjects: messages.Subjects{Stream: cfg.Stream, Consumer: cfg.Consumer, CancelSubject: cfg.CancelSubject, CancelAllSubject: cfg.CancelAllSubject,
			AckSubject: cfg.AckSubject, RejectedSubject: cfg.RejectedSubject, CancelAllProgressSubject: "orders.cancel-all.progress"},
		DuplicateWindow: time.Hour, StreamReplicas: 1,
		AckWait: time.Minute, MaxDeliver: 20, MaxAckPending: 1000,
	}
	ctx := context.Background()
	_, err := worker.EnsureStream(ctx, js, wc)
	require.NoError(t, err)
	cons, _, err := worker.EnsureConsumer(ctx, js, wc)
	require.NoError(t, err)
	return &history{t: t, js: js, cons: cons, seqs: map[string]uint64{}}
}

func (h *history) publish(subject, body string) uint64 {
	h.t.Helper()
	ack, err := h.js.Publish(context.Background(), subject, []byte(body))
	require.NoError(h.t, err)
	if id := messages.LenientEcho([]byte(body)).RequestID; id != "" {
		h.seqs[id] = ack.Sequence
	}
	return ack.Sequence
}

// fate is what the fake worker does with one delivered request.
type fate struct {
	result *messages.Result // published before the ack, unless nil
	term   bool             // Term instead of Ack
	hold   bool             // neither: the message stays held
}

// work delivers the next len(fates) requests on the worker's consumer and
// deals with each as its fate says, as the worker would (result first, then
// the ack).
func (h *history) work(fates ...func(jetstream.Msg) fate) {
	h.t.Helper()
	batch, err := h.cons.Fetch(len(fates), jetstream.FetchMaxWait(waitFor), jetstream.FetchPriorityGroup(worker.PriorityGroup))
	require.NoError(h.t, err)
	i := 0
	for msg := range batch.Messages() {
		f := fates[i](msg)
		i++
		if f.result != nil {
			body, err := f.result.Marshal()
			require.NoError(h.t, err)
			subject := cfg.RejectedSubject
			if f.result.Acknowledged() {
				subject = cfg.AckSubject
			}
			_, err = h.js.Publish(context.Background(), subject, body, jetstream.WithMsgID(f.result.MsgID()))
			require.NoError(h.t, err)
		}
		switch {
		case f.hold:
		case f.term:
			require.NoError(h.t, msg.Term())
		default:
			require.NoError(h.t, msg.DoubleAck(context.Background()))
		}
	}
	require.Equal(h.t, len(fates), i)
}

// answer returns a fate that publishes a result of the given status.
func answer(status messages.Status, edit func(*messages.Result)) func(jetstream.Msg) fate {
	return func(msg jetstream.Msg) fate {
		meta, _ := msg.Metadata()
		var r messages.Result
		if status == messages.StatusInvalid {
			r = messages.NewInvalidResult(msg.Data(), messages.ErrInvalid, messages.RequestID(messages.LenientEcho(msg.Data()).RequestID, "", cfg.Stream, meta.Sequence.Stream), meta.Sequence.Stream, meta.Timestamp)
		} else {
			var c messages.Cancel
			if msg.Subject() == cfg.CancelAllSubject {
				a, err := messages.DecodeCancelAll(msg.Data())
				if err != nil {
					panic(err)
				}
				r = messages.NewCancelAllResult(a, a.RequestID, meta.Sequence.Stream, meta.Timestamp)
			} else {
				var err error
				if c, err = messages.DecodeCancel(msg.Data()); err != nil {
					panic(err)
				}
				r = messages.NewResult(c, c.RequestID, meta.Sequence.Stream, meta.Timestamp)
			}
			r.Status, r.Attempts = status, 1
			code := 0
			if status != messages.StatusCancelled && status != messages.StatusFailed {
				code = 110001
			}
			r.RetCode = &code
		}
		if edit != nil {
			edit(&r)
		}
		return fate{result: &r}
	}
}

func ackOnly(jetstream.Msg) fate  { return fate{} }
func termOnly(jetstream.Msg) fate { return fate{term: true} }
func hold(jetstream.Msg) fate     { return fate{hold: true} }

// mixedHistory writes one request of every kind: cancelled, not_open,
// rejected, invalid, failed, a cancel-all, two unanswered (acked or
// terminated without a result) and two pending (held, never delivered).
func mixedHistory(t *testing.T) *history {
	h := newHistory(t)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":"o-1","requestId":"r-cancelled"}`)
	h.publish(cfg.CancelSubject, `{"category":"spot","symbol":"ETHUSDT","orderLinkId":"l-2","requestId":"r-not-open"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":"o-3","requestId":"r-rejected"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":7,"requestId":"r-invalid"}`)
	h.publish(cfg.CancelSubject, `{"category":"inverse","symbol":"BTCUSD","orderId":"o-5","requestId":"r-failed"}`)
	h.publish(cfg.CancelAllSubject, `{"category":"linear","symbol":"ETHUSDT","requestId":"r-all"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":"o-7","requestId":"r-acked"}`)
	h.publish(cfg.CancelSubject, `{"category":"option","symbol":"BTC-27DEC24-100000-C","orderId":"o-8","requestId":"r-termed"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":"o-9","requestId":"r-held"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":"o-10","requestId":"r-waiting"}`)
	h.work(
		answer(messages.StatusCancelled, func(r *messages.Result) { r.RateLimitWaitMs = 250 }),
		answer(messages.StatusNotOpen, func(r *messages.Result) { r.Ambiguous, r.Attempts = true, 2 }),
		answer(messages.StatusRejected, func(r *messages.Result) { r.RetMsg = "order not exists or too late to cancel" }),
		answer(messages.StatusInvalid, nil),
		answer(messages.StatusFailed, func(r *messages.Result) { r.LastError, r.Attempts, r.RetCode = "HTTP 502", 9, nil }),
		answer(messages.StatusCancelled, func(r *messages.Result) {
			r.Orders = []messages.OrderRef{{OrderID: "o-a1"}, {OrderID: "o-a2"}}
		}),
		ackOnly, termOnly, hold,
	)
	// The floor moves once the server has processed the term.
	require.Eventually(t, func() bool {
		info, err := h.cons.Info(context.Background())
		return err == nil && info.AckFloor.Stream == h.seqs["r-termed"]
	}, waitFor, 10*time.Millisecond)
	return h
}

func read(t *testing.T, js jetstream.JetStream, w replay.Window, f replay.Filter) *replay.Report {
	t.Helper()
	rep, err := replay.Read(context.Background(), js, cfg, w, f)
	require.NoError(t, err)
	return rep
}

func statuses(rows []*replay.Row) map[string]string {
	out := map[string]string{}
	for _, r := range rows {
		out[r.RequestID] = r.Status
	}
	return out
}

func TestReplayJoinsEveryRequestWithWhatBecameOfIt(t *testing.T) {
	h := mixedHistory(t)
	rep := read(t, h.js, replay.Window{}, replay.Filter{})
	require.Empty(t, rep.Warnings)
	require.Equal(t, map[string]string{
		"r-cancelled": "cancelled", "r-not-open": "not_open", "r-rejected": "rejected", "r-invalid": "invalid",
		"r-failed": "failed", "r-all": "cancelled", "r-acked": "unanswered", "r-termed": "unanswered",
		"r-held": "pending", "r-waiting": "pending",
	}, statuses(rep.Rows))
	for i, r := range rep.Rows {
		if i > 0 {
			require.Greater(t, r.Seq, rep.Rows[i-1].Seq, "stream order")
		}
		_, answered := r.Latency()
		require.Equal(t, r.Status != "unanswered" && r.Status != "pending", answered, r.RequestID)
	}
	byID := map[string]*replay.Row{}
	for _, r := range rep.Rows {
		byID[r.RequestID] = r
	}
	require.True(t, byID["r-not-open"].Ambiguous)
	require.Equal(t, 2, byID["r-not-open"].Attempts)
	require.Equal(t, "l-2", byID["r-not-open"].OrderLinkID)
	require.Equal(t, 110001, *byID["r-rejected"].RetCode)
	require.Equal(t, "HTTP 502", byID["r-failed"].LastError)
	require.Equal(t, int64(250), byID["r-cancelled"].RateLimitWaitMs)
	require.Equal(t, 2, byID["r-all"].Orders)
	require.Equal(t, "linear", byID["r-invalid"].Category, "an invalid body is shown with what can be read of it")
	require.Contains(t, byID["r-invalid"].Error, "invalid")

	s := replay.Summarise(rep.Rows)
	require.Equal(t, 10, s.Requests)
	require.Equal(t, map[string]int{"cancelled": 2, "not_open": 1, "rejected": 1, "invalid": 1, "failed": 1, "unanswered": 2, "pending": 2}, s.ByStatus)
	require.Equal(t, 3, s.Open, "two unanswered and one failed")
	require.Equal(t, 6, s.LatencyMs.N)
	require.LessOrEqual(t, s.LatencyMs.P50, s.LatencyMs.P95)
	require.LessOrEqual(t, s.LatencyMs.P99, s.LatencyMs.Max)
	require.Equal(t, replay.RateLimitWait{Requests: 1, TotalMs: 250, MaxMs: 250}, s.RateLimit)
	require.NotEmpty(t, s.Gaps)
	require.LessOrEqual(t, len(s.Gaps), replay.MaxGaps)
	for i, g := range s.Gaps {
		require.Positive(t, g.Ms)
		require.Positive(t, g.Waiting)
		if i > 0 {
			require.LessOrEqual(t, g.Ms, s.Gaps[i-1].Ms, "longest first")
		}
	}

	var table bytes.Buffer
	require.NoError(t, replay.WriteTable(&table, rep.Rows, s))
	lines := strings.Split(table.String(), "\n")
	require.Contains(t, lines[0], "STATUS")
	require.Contains(t, table.String(), "10 requests from ")
	require.Contains(t, table.String(), "cancelled 2, not_open 1, rejected 1, invalid 1, failed 1, unanswered 2, pending 2")
	require.Contains(t, table.String(), "publish→result latency (6 answered): p50 ")
	require.Contains(t, table.String(), "waiting on rate limits: 1 request, 250ms in all, longest 250ms")
	require.Contains(t, table.String(), "longest gaps with requests waiting")
	for _, want := range [][]string{
		{"r-not-open", "spot", "ETHUSDT", "link:l-2", "not_open", "110001", "yes", "2"},
		{"r-failed", "inverse", "o-5", "failed", "HTTP 502"},
		{"r-all", "all (2 orders)", "cancelled"},
		{"r-held", "o-9", "pending", "-"},
	} {
		line := lineWith(t, lines, want[0])
		for _, field := range want[1:] {
			if strings.Contains(field, " ") {
				require.Contains(t, line, field)
				continue
			}
			require.Contains(t, strings.Fields(line), field, "%q in %q", field, line)
		}
	}

	var js bytes.Buffer
	require.NoError(t, replay.WriteJSON(&js, rep.Rows, s))
	jsonLines := strings.Split(strings.TrimSpace(js.String()), "\n")
	require.Len(t, jsonLines, 11)
	var first map[string]any
	require.NoError(t, json.Unmarshal([]byte(jsonLines[0]), &first))
	require.Equal(t, "request", first["type"])
	require.Equal(t, "r-cancelled", first["requestId"])
	require.Equal(t, "cancelled", first["status"])
	require.Equal(t, float64(250), first["rateLimitWaitMs"])
	require.Contains(t, first, "latencyMs")
	var pending map[string]any
	require.NoError(t, json.Unmarshal([]byte(jsonLines[9]), &pending))
	require.Equal(t, "pending", pending["status"])
	require.NotContains(t, pending, "latencyMs")
	var sum map[string]any
	require.NoError(t, json.Unmarshal([]byte(jsonLines[10]), &sum))
	require.Equal(t, "summary", sum["type"])
	require.Equal(t, float64(10), sum["requests"])
	require.Equal(t, float64(2), sum["byStatus"].(map[string]any)["unanswered"])
}

func lineWith(t *testing.T, lines []string, s string) string {
	t.Helper()
	for _, l := range lines {
		if strings.Contains(l, s) {
			return l
		}
	}
	t.Fatalf("no line has %q", s)
	return ""
}

func TestReplayWindowsAndFilters(t *testing.T) {
	h := mixedHistory(t)
	ctx := context.Background()
	stream, err := h.js.Stream(ctx, cfg.Stream)
	require.NoError(t, err)
	at := func(id string) time.Time {
		m, err := stream.GetMsg(ctx, h.seqs[id])
		require.NoError(t, err)
		return m.Time
	}
	ids := func(rep *replay.Report) []string {
		var out []string
		for _, r := range rep.Rows {
			out = append(out, r.RequestID)
		}
		return out
	}

	// Every result was published after the last request: results are found
	// past the window's end.
	rep := read(t, h.js, replay.Window{FromSeq: h.seqs["r-not-open"], ToSeq: h.seqs["r-rejected"]}, replay.Filter{})
	require.Equal(t, []string{"r-not-open", "r-rejected"}, ids(rep))
	require.Equal(t, map[string]string{"r-not-open": "not_open", "r-rejected": "rejected"}, statuses(rep.Rows))

	rep = read(t, h.js, replay.Window{Since: at("r-failed"), Until: at("r-acked")}, replay.Filter{})
	require.Equal(t, []string{"r-failed", "r-all", "r-acked"}, ids(rep))
	rep = read(t, h.js, replay.Window{Since: at("r-held")}, replay.Filter{})
	require.Equal(t, []string{"r-held", "r-waiting"}, ids(rep))
	rep = read(t, h.js, replay.Window{FromSeq: 1000}, replay.Filter{})
	require.Empty(t, rep.Rows)

	rep = read(t, h.js, replay.Window{}, replay.Filter{Category: "linear", Symbol: "BTCUSDT"})
	require.Equal(t, []string{"r-cancelled", "r-rejected", "r-invalid", "r-acked", "r-held", "r-waiting"}, ids(rep))
	rep = read(t, h.js, replay.Window{}, replay.Filter{RequestID: "r-termed"})
	require.Equal(t, []string{"r-termed"}, ids(rep))
	rep = read(t, h.js, replay.Window{}, replay.Filter{OrderID: "l-2"})
	require.Equal(t, []string{"r-not-open"}, ids(rep))
	rep = read(t, h.js, replay.Window{}, replay.Filter{OrderID: "o-a2"})
	require.Equal(t, []string{"r-all"}, ids(rep), "a cancel-all is found by an order its result lists")
}

func TestReplayWithoutTheConsumerNeverCallsARequestUnanswered(t *testing.T) {
	h := mixedHistory(t)
	require.NoError(t, h.js.DeleteConsumer(context.Background(), cfg.Stream, cfg.Consumer))
	rep := read(t, h.js, replay.Window{}, replay.Filter{})
	require.Len(t, rep.Warnings, 1)
	require.Contains(t, rep.Warnings[0], "consumer cancel-worker not found")
	s := statuses(rep.Rows)
	require.Equal(t, "pending", s["r-acked"])
	require.Equal(t, "pending", s["r-termed"])
	require.Equal(t, "cancelled", s["r-cancelled"])
}

func TestResendRepublishesTheUnansweredAndFailedOnceAndClosesTheGap(t *testing.T) {
	h := mixedHistory(t)
	ctx := context.Background()
	rep := read(t, h.js, replay.Window{}, replay.Filter{})
	plan, skipped := replay.Plan(rep.Rows, replay.PlanOptions{})
	var planned []string
	for _, p := range plan {
		planned = append(planned, p.Original.RequestID)
		require.Equal(t, replay.ResendMsgID(p.Original.Seq), p.MsgID)
		require.Equal(t, p.Original.Subject, p.Subject)
		c, err := messages.DecodeCancel(p.Body)
		require.NoError(t, err, "a resend is a valid request")
		require.Equal(t, p.Original.RequestID, c.ReplayOf)
		require.Equal(t, p.Original.Seq, c.ReplayOfSeq)
		require.Equal(t, p.RequestID, c.RequestID)
		require.NotEqual(t, p.Original.RequestID, c.RequestID)
		require.Equal(t, p.Original.OrderID, c.OrderID)
		require.Equal(t, p.Original.Category, c.Category)
	}
	require.Equal(t, []string{"r-failed", "r-acked", "r-termed"}, planned)
	reasons := map[string]string{}
	for _, s := range skipped {
		reasons[s.Row.RequestID] = s.Reason
	}
	require.Contains(t, reasons["r-held"], "pending")
	require.Contains(t, reasons["r-waiting"], "pending")
	require.Contains(t, reasons["r-not-open"], "--include-rejected")
	require.Contains(t, reasons["r-rejected"], "--include-rejected")
	require.Len(t, reasons, 4)

	withRejected, _ := replay.Plan(rep.Rows, replay.PlanOptions{IncludeRejected: true})
	require.Len(t, withRejected, 5)

	var dry bytes.Buffer
	require.NoError(t, replay.WritePlan(&dry, plan, skipped, true))
	require.Contains(t, dry.String(), "PUB orders.cancel\nNats-Msg-Id: resend:"+itoa(h.seqs["r-acked"])+"\n\n{")
	require.Contains(t, dry.String(), "3 to resend, 4 skipped")

	got, err := replay.Publish(ctx, h.js, plan)
	require.NoError(t, err)
	require.Equal(t, replay.Published{New: 3}, got)
	again, err := replay.Publish(ctx, h.js, plan)
	require.NoError(t, err)
	require.Equal(t, replay.Published{Duplicates: 3}, again, "the same resend inside the duplicate window adds nothing")

	// Resent but not yet answered: they are pending, and a second plan does
	// not resend them again.
	rep = read(t, h.js, replay.Window{ToSeq: h.seqs["r-waiting"]}, replay.Filter{})
	plan2, skipped2 := replay.Plan(rep.Rows, replay.PlanOptions{})
	require.Empty(t, plan2)
	require.Len(t, skipped2, 7)

	// The worker answers the waiting request and the three resends (their
	// results carry replayOf as the worker's do); the held one stays held.
	h.work(answer(messages.StatusCancelled, nil),
		answer(messages.StatusCancelled, nil), answer(messages.StatusNotOpen, nil), answer(messages.StatusCancelled, nil))
	rep = read(t, h.js, replay.Window{ToSeq: h.seqs["r-waiting"]}, replay.Filter{})
	s := replay.Summarise(rep.Rows)
	require.Equal(t, 3, s.AnsweredByReplay)
	require.Zero(t, s.Open, "every gap is closed")
	for _, r := range rep.Rows {
		rp, ok := r.AnsweredByReplay()
		switch r.RequestID {
		case "r-failed", "r-acked", "r-termed":
			require.True(t, ok, r.RequestID)
			require.Equal(t, r.RequestID+"/resend-"+itoa(r.Seq), rp.RequestID)
		default:
			require.False(t, ok, r.RequestID)
		}
	}
	require.Equal(t, "not_open", mustRow(t, rep.Rows, "r-acked").Replays[0].Status)
	require.Equal(t, "pending", mustRow(t, rep.Rows, "r-held").Status)
	var table bytes.Buffer
	require.NoError(t, replay.WriteTable(&table, rep.Rows, s))
	require.Contains(t, lineWith(t, strings.Split(table.String(), "\n"), "r-acked "), "answered by its replay, sequence")

	// The resends themselves are requests in a window that includes them.
	rep = read(t, h.js, replay.Window{FromSeq: h.seqs["r-waiting"] + 1}, replay.Filter{})
	var resends int
	for _, r := range rep.Rows {
		if r.ReplayOfSeq != 0 {
			resends++
			require.Contains(t, []uint64{h.seqs["r-failed"], h.seqs["r-acked"], h.seqs["r-termed"]}, r.ReplayOfSeq)
		}
	}
	require.Equal(t, 3, resends)
}

func mustRow(t *testing.T, rows []*replay.Row, id string) *replay.Row {
	t.Helper()
	for _, r := range rows {
		if r.RequestID == id {
			return r
		}
	}
	t.Fatalf("no row %s", id)
	return nil
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func TestResendOfACancelAllAndOfAnUnreadableBody(t *testing.T) {
	h := newHistory(t)
	h.publish(cfg.CancelAllSubject, `{"category":"linear","settleCoin":"USDT","requestId":"kill"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","orderId":"x","requestId":"bad"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":"x"}`)
	h.work(answer(messages.StatusFailed, nil), ackOnly, ackOnly)
	require.Eventually(t, func() bool {
		info, err := h.cons.Info(context.Background())
		return err == nil && info.AckFloor.Stream == 3
	}, waitFor, 10*time.Millisecond)
	rep := read(t, h.js, replay.Window{}, replay.Filter{})
	// Cancel-alls are resent only when asked for (TestResendSkipsCancelAllsUnlessAskedFor).
	plan, skipped := replay.Plan(rep.Rows, replay.PlanOptions{IncludeCancelAll: true})
	require.Len(t, plan, 2)
	require.Equal(t, cfg.CancelAllSubject, plan[0].Subject)
	all, err := messages.DecodeCancelAll(plan[0].Body)
	require.NoError(t, err)
	require.Equal(t, messages.CancelAll{Category: "linear", SettleCoin: "USDT", RequestID: "kill/resend-1", ReplayOf: "kill", ReplayOfSeq: 1}, all)
	c, err := messages.DecodeCancel(plan[1].Body)
	require.NoError(t, err)
	require.Equal(t, "ORDERS:3", c.ReplayOf, "a request without requestId is named by the requestId rule")
	require.Equal(t, "ORDERS:3/resend-3", c.RequestID)
	require.Len(t, skipped, 1)
	require.Contains(t, skipped[0].Reason, "not a valid request: ")
	require.Contains(t, skipped[0].Reason, "symbol is required")
}

func TestReplayReadsPastOneBatchAndJoinsResultsPublishedOutOfOrder(t *testing.T) {
	h := newHistory(t)
	const n = 2500
	for i := range n {
		_, err := h.js.PublishAsync(cfg.CancelSubject, []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"o-`+strconv.Itoa(i)+`"}`))
		require.NoError(t, err)
	}
	select {
	case <-h.js.PublishAsyncComplete():
	case <-time.After(waitFor):
		t.Fatal("publish did not complete")
	}
	// Results in reverse order, as concurrent lanes may publish them.
	for seq := uint64(n); seq >= 1; seq-- {
		code := 0
		r := messages.Result{RequestSeq: seq, RequestID: "ORDERS:" + itoa(seq), Status: messages.StatusCancelled, RetCode: &code, Attempts: 1}
		body, err := r.Marshal()
		require.NoError(t, err)
		_, err = h.js.PublishAsync(cfg.AckSubject, body)
		require.NoError(t, err)
	}
	select {
	case <-h.js.PublishAsyncComplete():
	case <-time.After(waitFor):
		t.Fatal("publish did not complete")
	}
	rep := read(t, h.js, replay.Window{}, replay.Filter{})
	require.Len(t, rep.Rows, n)
	s := replay.Summarise(rep.Rows)
	require.Equal(t, map[string]int{"cancelled": n}, s.ByStatus)
	require.Equal(t, uint64(2*n), rep.ReadTo)
}

// A cancel-all resent hours later also cancels every order placed since: a
// failed or unanswered one is resent only when asked for by name, and the
// plan says which were skipped and why.
func TestResendSkipsCancelAllsUnlessAskedFor(t *testing.T) {
	h := newHistory(t)
	h.publish(cfg.CancelAllSubject, `{"category":"linear","settleCoin":"USDT","requestId":"kill-failed"}`)
	h.publish(cfg.CancelAllSubject, `{"category":"spot","requestId":"kill-lost"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":"x","requestId":"one"}`)
	// A worker stores a running cancel-all's progress in the same stream:
	// replay reads it as neither request nor result.
	_, err := h.js.Publish(context.Background(), "orders.cancel-all.progress.1", []byte(`{"requestSeq":1,"run":"r","delivery":1,"call":1,"orders":[{"orderId":"o","orderLinkId":""}]}`))
	require.NoError(t, err)
	h.work(answer(messages.StatusFailed, nil), ackOnly, answer(messages.StatusFailed, nil))
	require.Eventually(t, func() bool {
		info, err := h.cons.Info(context.Background())
		return err == nil && info.AckFloor.Stream == 3
	}, waitFor, 10*time.Millisecond)
	rep := read(t, h.js, replay.Window{}, replay.Filter{})
	require.Len(t, rep.Rows, 3)
	require.Empty(t, rep.Warnings)

	plan, skipped := replay.Plan(rep.Rows, replay.PlanOptions{})
	require.Len(t, plan, 1)
	require.Equal(t, "one", plan[0].Original.RequestID, "a single cancel is resent as before")
	reasons := map[string]string{}
	for _, s := range skipped {
		reasons[s.Row.RequestID] = s.Reason
	}
	require.Len(t, reasons, 2)
	for _, id := range []string{"kill-failed", "kill-lost"} {
		require.Contains(t, reasons[id], "--include-cancel-all", id)
		require.Contains(t, reasons[id], "every order placed since", id)
	}
	var out bytes.Buffer
	require.NoError(t, replay.WritePlan(&out, plan, skipped, false))
	require.Contains(t, out.String(), "skip sequence "+itoa(h.seqs["kill-lost"])+" (kill-lost): unanswered cancel-all:")
	require.Contains(t, out.String(), "1 to resend, 2 skipped")

	plan, skipped = replay.Plan(rep.Rows, replay.PlanOptions{IncludeCancelAll: true})
	require.Len(t, plan, 3, "asked for by name, they are resent")
	require.Empty(t, skipped)
	require.Equal(t, cfg.CancelAllSubject, plan[0].Subject)
	require.Equal(t, "kill-failed/resend-"+itoa(h.seqs["kill-failed"]), plan[0].RequestID)
}
