package replay_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/replay"
)

// consumerNames lists the consumers of the stream.
func consumerNames(t *testing.T, h *history) []string {
	t.Helper()
	s, err := h.js.Stream(context.Background(), cfg.Stream)
	require.NoError(t, err)
	var names []string
	lister := s.ConsumerNames(context.Background())
	for n := range lister.Name() {
		names = append(names, n)
	}
	require.NoError(t, lister.Err())
	return names
}

// A replay reads with consumers of its own; when it ends they are gone, not
// left for the server's inactivity threshold.
func TestReplayDeletesItsConsumersWhenItEnds(t *testing.T) {
	t.Parallel()
	h := newHistory(t)
	require.Equal(t, []string{cfg.Consumer}, consumerNames(t, h))
	rep := read(t, h.js, replay.Window{}, replay.Filter{})
	require.Empty(t, rep.Rows, "an empty stream reads as nothing")
	require.Equal(t, []string{cfg.Consumer}, consumerNames(t, h))

	h = mixedHistory(t)
	rep = read(t, h.js, replay.Window{}, replay.Filter{})
	require.Len(t, rep.Rows, 10)
	require.Equal(t, []string{cfg.Consumer}, consumerNames(t, h), "only the worker's durable consumer is left")

	// Also when the read fails part-way (here: cancelled).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := replay.Read(ctx, h.js, cfg, replay.Window{}, replay.Filter{})
	require.Error(t, err)
	require.Equal(t, []string{cfg.Consumer}, consumerNames(t, h))
}

// An order that filled before its cancel landed is accepted (cancelled) and
// yet not cancelled: the review shows each request's confirmation.
func TestReplayShowsEachRequestsConfirmation(t *testing.T) {
	t.Parallel()
	h := newHistory(t)
	s, err := h.js.Stream(context.Background(), cfg.Stream)
	require.NoError(t, err)
	sc := s.CachedInfo().Config
	sc.Subjects = append(sc.Subjects, "orders.cancel.confirmed")
	_, err = h.js.UpdateStream(context.Background(), sc)
	require.NoError(t, err)
	h.publish(cfg.CancelSubject, `{"category":"spot","symbol":"ETHUSDT","orderId":"o-fill","requestId":"r-filled"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":"o-ok","requestId":"r-cancelled"}`)
	h.publish(cfg.CancelAllSubject, `{"category":"linear","symbol":"ETHUSDT","requestId":"r-all"}`)
	h.publish(cfg.CancelSubject, `{"category":"linear","symbol":"BTCUSDT","orderId":"o-none","requestId":"r-unconfirmed"}`)
	h.work(
		answer(messages.StatusCancelled, nil),
		answer(messages.StatusCancelled, nil),
		answer(messages.StatusCancelled, func(r *messages.Result) {
			r.Orders = []messages.OrderRef{{OrderID: "o-a1"}, {OrderID: "o-a2"}}
		}),
		answer(messages.StatusCancelled, nil),
	)
	seqs := map[string]uint64{}
	for id, seq := range h.seqs {
		seqs[id] = seq // h.publish records the confirmations' sequences under the same requestIds
	}
	confirm := func(requestID, orderID, status string, final bool) {
		c := messages.Confirmation{
			RequestID: requestID, RequestSeq: seqs[requestID], OrderID: orderID, Category: "linear",
			ResultStatus: messages.StatusCancelled, OrderStatus: status, Final: final, ConfirmedBy: messages.ConfirmedByWebSocket,
			AckTime: time.Now(), ConfirmedAt: time.Now(), AckToConfirmMs: 30,
		}
		body, err := c.Marshal()
		require.NoError(t, err)
		h.publish("orders.cancel.confirmed", string(body))
	}
	confirm("r-filled", "o-fill", "Filled", true)
	confirm("r-cancelled", "o-ok", "Cancelled", true)
	confirm("r-all", "o-a1", "Cancelled", true)
	confirm("r-all", "o-a2", "PartiallyFilledCanceled", true)

	withConf := cfg
	withConf.ConfirmedSubject = "orders.cancel.confirmed"
	rep, err := replay.Read(context.Background(), h.js, withConf, replay.Window{}, replay.Filter{})
	require.NoError(t, err)
	byID := map[string]*replay.Row{}
	for _, r := range rep.Rows {
		byID[r.RequestID] = r
	}
	require.Len(t, byID, 4, "confirmations are not requests")
	require.Equal(t, "Filled", byID["r-filled"].OrderStatus())
	require.Equal(t, []replay.Confirmed{{OrderID: "o-fill", OrderStatus: "Filled", Final: true, ConfirmedBy: "websocket"}}, byID["r-filled"].Confirmations)
	require.Equal(t, "Cancelled", byID["r-cancelled"].OrderStatus())
	require.Equal(t, "Cancelled 1, PartiallyFilledCanceled 1", byID["r-all"].OrderStatus())
	require.Equal(t, "", byID["r-unconfirmed"].OrderStatus())

	sum := replay.Summarise(rep.Rows)
	require.Equal(t, map[string]int{"Filled": 1, "Cancelled": 2, "PartiallyFilledCanceled": 1}, sum.OrderStatuses)
	require.Equal(t, []string{"r-filled"}, sum.FilledBeforeCancel)
	var table bytes.Buffer
	require.NoError(t, replay.WriteTable(&table, rep.Rows, sum))
	require.Contains(t, table.String(), "ORDER STATUS")
	require.Contains(t, table.String(), "Filled")
	require.Contains(t, table.String(), "confirmations: 4 orders (Cancelled 2, Filled 1, PartiallyFilledCanceled 1)")
	require.Contains(t, table.String(), "accepted, yet the order was not cancelled (it filled first): r-filled")

	// Without the confirmed subject the review reads as before.
	rep = read(t, h.js, replay.Window{}, replay.Filter{})
	require.Len(t, rep.Rows, 4)
	require.Empty(t, rep.Rows[0].Confirmations)
}

func TestReplayWithoutTheConfirmedSubjectInTheStream(t *testing.T) {
	t.Parallel()
	h := mixedHistory(t)
	withConf := cfg
	withConf.ConfirmedSubject = "orders.cancel.confirmed"
	rep, err := replay.Read(context.Background(), h.js, withConf, replay.Window{}, replay.Filter{})
	require.NoError(t, err)
	require.Len(t, rep.Rows, 10)
	require.Contains(t, rep.Warnings, "stream ORDERS does not capture orders.cancel.confirmed: no confirmations shown")
}
