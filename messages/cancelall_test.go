package messages

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDecodeCancelAllPerCategory(t *testing.T) {
	t.Parallel()
	valid := []string{
		`{"category":"linear","symbol":"BTCUSDT"}`,
		`{"category":"inverse","baseCoin":"BTC"}`,
		`{"category":"linear","settleCoin":"USDT","orderFilter":"StopOrder","stopOrderType":"Stop"}`,
		`{"category":"linear","symbol":"BTCUSDT","orderFilter":"OpenOrder"}`,
		`{"category":"spot"}`,
		`{"category":"spot","orderFilter":"tpslOrder","requestId":"kill-1","account":"hedge"}`,
		`{"category":"option"}`,
		`{"category":"option","baseCoin":"ETH"}`,
		`{"scope":"account"}`,
		`{"scope":"account","account":"hedge","requestId":"flatten-1"}`,
	}
	for _, body := range valid {
		_, err := DecodeCancelAll([]byte(body))
		require.NoError(t, err, body)
	}
	invalid := map[string]string{
		`{"category":"linear"}`:                                                                           "needs one of symbol, baseCoin or settleCoin",
		`{"category":"inverse","orderFilter":"Order"}`:                                                    "needs one of",
		`{"category":"spot","orderFilter":"OpenOrder"}`:                                                   "not valid for a spot cancel-all",
		`{"category":"linear","symbol":"BTCUSDT","orderFilter":"tpslOrder"}`:                              "not valid for a linear cancel-all",
		`{"category":"option","orderFilter":"OpenOrder"}`:                                                 "not valid for a option cancel-all",
		`{"category":"option","orderFilter":"tpslOrder"}`:                                                 "not valid for a option cancel-all",
		`{"category":"linear","symbol":"BTCUSDT","stopOrderType":"Stop"}`:                                 "stopOrderType is valid only",
		`{"category":"spot","orderFilter":"StopOrder","stopOrderType":"Stop"}`:                            "stopOrderType is valid only",
		`{"category":"linear","symbol":"BTCUSDT","orderFilter":"StopOrder","stopOrderType":"TakeProfit"}`: "is not Stop",
		`{"category":"linear","symbol":"btcusdt"}`:                                                        "lower-case",
		`{"category":"linear","symbol":"BTCUSDT","orderId":"1"}`:                                          `unknown field "orderId"`,
		`{"category":"futures","symbol":"BTCUSDT"}`:                                                       "not one of",
		`{"scope":"account","category":"spot"}`:                                                           "takes no category",
		`{"scope":"account","settleCoin":"USDT"}`:                                                         "takes no category",
		`{"scope":"everything"}`:                                                                          `is not "account"`,
		`{}`:                                                                                              "category",
	}
	for body, want := range invalid {
		_, err := DecodeCancelAll([]byte(body))
		require.ErrorIs(t, err, ErrInvalid, body)
		require.ErrorContains(t, err, want, body)
	}
}

func TestCancelAllProgressRoundTripsAndDedupesPerCall(t *testing.T) {
	t.Parallel()
	call := CancelAllProgress{RequestSeq: 14, Run: "r1", Delivery: 2, Call: 3, Orders: []OrderRef{{OrderID: "a", OrderLinkID: "l"}}}
	require.Equal(t, "progress:14:r1:3", CancelAllProgressMsgID(call))
	require.Equal(t, "progress:14:r1:released", CancelAllProgressMsgID(CancelAllProgress{RequestSeq: 14, Run: "r1", Delivery: 2, Released: true}))
	data, err := json.Marshal(call)
	require.NoError(t, err)
	require.JSONEq(t, `{"requestSeq":14,"run":"r1","delivery":2,"call":3,"orders":[{"orderId":"a","orderLinkId":"l"}]}`, string(data))
	back, err := DecodeCancelAllProgress(data)
	require.NoError(t, err)
	require.Equal(t, call, back)
}

// Bybit's cancel-all (docs/v5/order/cancel-all.mdx): category=option accepts
// orderFilter Order and StopOrder.
func TestOptionCancelAllAcceptsOrderAndStopOrderFilters(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"Order", "StopOrder"} {
		c, err := DecodeCancelAll([]byte(`{"category":"option","baseCoin":"BTC","orderFilter":"` + f + `"}`))
		require.NoError(t, err, f)
		require.Equal(t, f, c.OrderFilter)
	}
}

func FuzzDecodeCancelAll(f *testing.F) {
	for _, seed := range []string{
		`{"category":"linear","settleCoin":"USDT"}`,
		`{"category":"spot","orderFilter":"tpslOrder","requestId":"kill-1"}`,
		`{"scope":"account","account":"hedge","requestId":"flatten-1"}`,
		`{"scope":"account","category":"spot"}`,
		`{"scope":"","category":"option"}`,
		`{"scope":null}`, `{}`, `[]`, "\xff",
	} {
		f.Add([]byte(seed))
	}
	// A flatten names no category.
	fuzzDecode(f, DecodeCancelAll, func(t *testing.T, c CancelAll) {
		require.Equal(t, c.Flatten(), c.Category == "")
	})
}
