package worker

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// What happened to a request, its delivery and its age map to one status and
// one JetStream action — without NATS or an exchange.
func TestDecideMapsWhatHappenedToStatusAndAction(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	api := func(code int) error { return &bybit.APIError{HTTPStatus: 200, RetCode: code, RetMsg: "m"} }
	reset := now.Add(700 * time.Millisecond)
	limited := &bybit.APIError{HTTPStatus: 200, RetCode: 10006, RetMsg: "too many", RateLimit: bybit.RateLimit{Known: true, Reset: reset}}
	written := &bybit.TransportError{Err: errors.New("reset by peer"), Written: true}
	unwritten := &bybit.TransportError{Err: errors.New("connection refused")}
	pol := policy{maxAge: time.Minute, retryBudget: 10 * time.Second, maxDeliver: 3,
		rateLimitBackoff: func() time.Duration { return 200 * time.Millisecond }}

	cases := []struct {
		name       string
		ev         event
		deliveries uint64
		age        time.Duration
		// transientFor: the delivery has failed transiently for this long.
		transientFor time.Duration
		skewRetries  int

		status    messages.Status // "" when no result is published
		action    action
		ambiguous bool
		delay     time.Duration
	}{
		{name: "cancelled", ev: answered(bybit.CancelOrderResult{OrderID: "o"}, nil), deliveries: 1, status: messages.StatusCancelled, action: actAck},
		{name: "cancelled on the last delivery", ev: answered(bybit.CancelOrderResult{}, nil), deliveries: 3, age: 2 * time.Minute, status: messages.StatusCancelled, action: actAck},
		{name: "order not open", ev: answered(bybit.CancelOrderResult{}, api(110001)), deliveries: 1, status: messages.StatusNotOpen, action: actAck},
		{name: "rejected by the exchange", ev: answered(bybit.CancelOrderResult{}, api(10001)), deliveries: 1, status: messages.StatusRejected, action: actAck},
		{name: "rejected without an envelope", ev: answered(bybit.CancelOrderResult{}, &bybit.HTTPError{StatusCode: http.StatusBadRequest}), deliveries: 1, status: messages.StatusRejected, action: actAck},
		{name: "server error, may have applied", ev: answered(bybit.CancelOrderResult{}, api(10016)), deliveries: 1, action: actRequeue, ambiguous: true},
		{name: "answer lost after writing", ev: answered(bybit.CancelOrderResult{}, written), deliveries: 1, action: actRequeue, ambiguous: true},
		{name: "never written", ev: answered(bybit.CancelOrderResult{}, unwritten), deliveries: 1, action: actRequeue},
		{name: "our own deadline", ev: answered(bybit.CancelOrderResult{}, context.DeadlineExceeded), deliveries: 1, action: actRequeue},
		{name: "retry budget spent", ev: answered(bybit.CancelOrderResult{}, unwritten), deliveries: 1, transientFor: 11 * time.Second, action: actNak},
		{name: "retry budget spent on the last delivery", ev: answered(bybit.CancelOrderResult{}, written), deliveries: 3, transientFor: 11 * time.Second, status: messages.StatusFailed, action: actTerm, ambiguous: true},
		{name: "transient, too old", ev: answered(bybit.CancelOrderResult{}, unwritten), deliveries: 1, age: 2 * time.Minute, status: messages.StatusFailed, action: actTerm},
		{name: "rate limited until the reset", ev: answered(bybit.CancelOrderResult{}, limited), deliveries: 3, age: 2 * time.Minute, action: actRequeue, delay: 700 * time.Millisecond},
		{name: "rate limited without a reset", ev: answered(bybit.CancelOrderResult{}, api(10006)), deliveries: 1, action: actRequeue, delay: 200 * time.Millisecond},
		{name: "over the IP limit", ev: answered(bybit.CancelOrderResult{}, api(10018)), deliveries: 1, action: actRequeue, delay: 200 * time.Millisecond},
		{name: "IP ban", ev: answered(bybit.CancelOrderResult{}, &bybit.HTTPError{StatusCode: http.StatusForbidden}), deliveries: 3, action: actRequeue},
		{name: "clock skew", ev: answered(bybit.CancelOrderResult{}, api(10002)), deliveries: 1, action: actRequeue},
		{name: "clock skew that resyncs do not fix", ev: answered(bybit.CancelOrderResult{}, api(10002)), deliveries: 3, skewRetries: 3, transientFor: 11 * time.Second, status: messages.StatusFailed, action: actTerm},
		{name: "invalid", ev: event{kind: evInvalid, err: messages.ErrInvalid}, deliveries: 1, status: messages.StatusInvalid, action: actTerm},
		{name: "expired before it was sent", ev: event{kind: evExpired, why: "be sent"}, deliveries: 1, age: 2 * time.Minute, status: messages.StatusFailed, action: actTerm},
		{name: "given back", ev: event{kind: evGiveBack, why: "shutdown", delay: time.Second}, deliveries: 2, action: actNak, delay: time.Second},
		{name: "given back on the last delivery", ev: event{kind: evGiveBack, why: "shutdown"}, deliveries: 3, status: messages.StatusFailed, action: actTerm},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			base := messages.NewResult(messages.Cancel{Category: "linear", Symbol: "BTCUSDT", OrderID: "o"}, "r-1", 7, now.Add(-tc.age))
			if tc.ev.kind == evInvalid {
				base = messages.NewInvalidResult([]byte(`{}`), tc.ev.err, "r-1", 7, now.Add(-tc.age))
			}
			rs := retryState{skewRetries: tc.skewRetries}
			if tc.transientFor > 0 {
				rs.transientSince = now.Add(-tc.transientFor)
			}
			d := decide(tc.ev, request{base: base, deliveries: tc.deliveries, requestTime: now.Add(-tc.age)}, &rs, pol, now)
			require.Equal(t, tc.action, d.action, "action")
			require.Equal(t, tc.ambiguous, d.ambiguous, "ambiguous")
			if tc.status != "" {
				require.Equal(t, tc.status, d.result.Status, "status")
			} else {
				require.Empty(t, d.result.Status, "no result for a %v", d.action)
			}
			if tc.delay > 0 {
				require.Equal(t, tc.delay, d.delay, "delay")
			}
			if d.action == actNak || d.action == actRequeue {
				require.NotEmpty(t, d.reason, "a requeue or nak names its reason for logs and metrics")
			}
		})
	}
}
