package worker

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// What a redelivered cancel-all may claim from the records earlier runs left.
func TestCancelAllProgressFold(t *testing.T) {
	t.Parallel()
	a, b := messages.OrderRef{OrderID: "a"}, messages.OrderRef{OrderID: "b"}
	call := func(run string, delivery uint64, orders ...messages.OrderRef) messages.CancelAllProgress {
		return messages.CancelAllProgress{Run: run, Delivery: delivery, Call: 1, Orders: orders}
	}
	released := func(run string, delivery uint64) messages.CancelAllProgress {
		return messages.CancelAllProgress{Run: run, Delivery: delivery, Released: true}
	}
	cases := map[string]struct {
		recs           []messages.CancelAllProgress
		delivery       uint64
		earlierMaySend bool
		orders         int
		complete       bool
	}{
		"released with its calls recorded":           {[]messages.CancelAllProgress{call("r1", 1, a, b), released("r1", 1)}, 2, true, 2, true},
		"crashed after a recorded call":              {[]messages.CancelAllProgress{call("r1", 1, a)}, 2, true, 1, false},
		"no record, earlier delivery may have sent":  {nil, 2, true, 0, false},
		"no record, released unsent by this process": {nil, 2, false, 0, true},
		"released, then a delivery left no record":   {[]messages.CancelAllProgress{call("r1", 1, a), released("r1", 1)}, 3, true, 1, false},
		"two runs, both released":                    {[]messages.CancelAllProgress{call("r1", 1, a), released("r1", 1), call("r2", 2, b, a), released("r2", 2)}, 3, true, 2, true},
		"a call's answer was lost":                   {[]messages.CancelAllProgress{call("r1", 1, a), {Run: "r1", Delivery: 1, Call: 2, Lost: true}, released("r1", 1)}, 2, true, 1, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := &cancelAllProgress{seen: map[string]bool{}}
			p.fold(tc.recs, tc.delivery, tc.earlierMaySend)
			require.Len(t, p.orders, tc.orders, "each order listed once")
			require.Equal(t, tc.complete, p.complete())
		})
	}
}
