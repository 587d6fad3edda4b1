package messages

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestDecodeCancelAcceptsBybitShapes(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		body string
		want Cancel
	}{
		"linear by orderId": {
			`{"category":"linear","symbol":"BTCUSDT","orderId":"c6f055d9-7f21-4079-913d-e6523a9cfffa"}`,
			Cancel{Category: "linear", Symbol: "BTCUSDT", OrderID: "c6f055d9-7f21-4079-913d-e6523a9cfffa"},
		},
		"spot by orderLinkId with filter": {
			`{"category":"spot","symbol":"ETHUSDT","orderLinkId":"my-1","orderFilter":"tpslOrder"}`,
			Cancel{Category: "spot", Symbol: "ETHUSDT", OrderLinkID: "my-1", OrderFilter: "tpslOrder"},
		},
		"option symbol": {
			`{"category":"option","symbol":"BTC-27DEC24-100000-C","orderLinkId":"opt-1"}`,
			Cancel{Category: "option", Symbol: "BTC-27DEC24-100000-C", OrderLinkID: "opt-1"},
		},
		"both ids pass through": {
			`{"category":"inverse","symbol":"BTCUSD","orderId":"1","orderLinkId":"2"}`,
			Cancel{Category: "inverse", Symbol: "BTCUSD", OrderID: "1", OrderLinkID: "2"},
		},
		"null counts as absent": {
			`{"category":"linear","symbol":"BTCPERP","orderLinkId":null,"orderId":"x","orderFilter":null,"requestId":null}`,
			Cancel{Category: "linear", Symbol: "BTCPERP", OrderID: "x"},
		},
		"replay fields": {
			`{"category":"linear","symbol":"BTCUSDT","orderId":"1","requestId":"r-1.replay","replayOf":"r-1","replayOfSeq":42}`,
			Cancel{Category: "linear", Symbol: "BTCUSDT", OrderID: "1", RequestID: "r-1.replay", ReplayOf: "r-1", ReplayOfSeq: 42},
		},
		"account": {
			`{"category":"linear","symbol":"BTCUSDT","orderId":"1","account":"hedge"}`,
			Cancel{Category: "linear", Symbol: "BTCUSDT", OrderID: "1", Account: "hedge"},
		},
		"white space around": {
			" \n{\"category\":\"linear\",\"symbol\":\"BTCUSDT\",\"orderId\":\"1\"}\n ",
			Cancel{Category: "linear", Symbol: "BTCUSDT", OrderID: "1"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := DecodeCancel([]byte(tc.body))
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestDecodeCancelRejectsEachRule(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		body string
		want string // part of the error
	}{
		"empty":                    {``, "empty body"},
		"blank":                    {"  \n", "empty body"},
		"not JSON":                 {`cancel it`, "not JSON"},
		"array":                    {`[1,2]`, "must be a JSON object"},
		"string":                   {`"x"`, "must be a JSON object"},
		"unknown field":            {`{"category":"linear","symbol":"BTCUSDT","orderId":"1","qty":"1"}`, `unknown field "qty"`},
		"wrong type":               {`{"category":"linear","symbol":"BTCUSDT","orderId":123}`, `field "orderId"`},
		"wrong type seq":           {`{"category":"linear","symbol":"BTCUSDT","orderId":"1","replayOfSeq":"7"}`, `field "replayOfSeq"`},
		"negative seq":             {`{"category":"linear","symbol":"BTCUSDT","orderId":"1","replayOfSeq":-1}`, `field "replayOfSeq"`},
		"trailing data":            {`{"category":"linear","symbol":"BTCUSDT","orderId":"1"} x`, "trailing data"},
		"two objects":              {`{"category":"linear","symbol":"BTCUSDT","orderId":"1"}{}`, "trailing data"},
		"duplicate key":            {`{"category":"linear","symbol":"BTCUSDT","orderId":"1","orderId":"2"}`, `duplicate field "orderId"`},
		"missing category":         {`{"symbol":"BTCUSDT","orderId":"1"}`, "category is required"},
		"unknown category":         {`{"category":"futures","symbol":"BTCUSDT","orderId":"1"}`, `category "futures" is not one of`},
		"missing symbol":           {`{"category":"linear","orderId":"1"}`, "symbol is required"},
		"lower-case symbol":        {`{"category":"linear","symbol":"btcUSDT","orderId":"1"}`, "lower-case"},
		"symbol with space":        {`{"category":"linear","symbol":"BTC USDT","orderId":"1"}`, "white space"},
		"no order id":              {`{"category":"linear","symbol":"BTCUSDT"}`, "one of orderId or orderLinkId"},
		"empty order ids":          {`{"category":"linear","symbol":"BTCUSDT","orderId":"","orderLinkId":""}`, "one of orderId or orderLinkId"},
		"orderFilter outside spot": {`{"category":"linear","symbol":"BTCUSDT","orderId":"1","orderFilter":"Order"}`, "spot only"},
		"unknown orderFilter":      {`{"category":"spot","symbol":"BTCUSDT","orderId":"1","orderFilter":"order"}`, "not one of Order"},
		"invalid UTF-8":            {"{\"category\":\"linear\",\"symbol\":\"BTCUSDT\",\"orderId\":\"\xff\"}", "UTF-8"},
		"nested":                   {`{"category":{"a":{"b":[[[[1]]]]}},"symbol":"BTCUSDT","orderId":"1"}`, `field "category"`},
		"deeply nested":            {strings.Repeat("[", 100000) + strings.Repeat("]", 100000), "must be a JSON object"},
		"deep value":               {`{"category":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`, `field "category"`},
		"control char in id":       {`{"category":"linear","symbol":"BTCUSDT","orderId":"a\u0000b"}`, "control characters"},
		"id too long":              {`{"category":"linear","symbol":"BTCUSDT","orderId":"` + strings.Repeat("1", MaxIDLen+1) + `"}`, "longer than"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeCancel([]byte(tc.body))
			require.ErrorIs(t, err, ErrInvalid)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestRequestIDRule(t *testing.T) {
	t.Parallel()
	require.Equal(t, "body", RequestID("body", "hdr", "ORDERS", 7))
	require.Equal(t, "hdr", RequestID("", "hdr", "ORDERS", 7))
	require.Equal(t, "ORDERS:7", RequestID("", "", "ORDERS", 7))
}

func TestInvalidResultKeepsTheOriginalRecognisable(t *testing.T) {
	t.Parallel()
	payload := []byte(strings.Repeat("x", MaxPayloadKept+100))
	_, err := DecodeCancel(payload)
	require.Error(t, err)
	r := NewInvalidResult(payload, err, "ORDERS:9", 9, time.Unix(1700000000, 0).UTC())
	require.Equal(t, StatusInvalid, r.Status)
	require.Equal(t, len(payload), r.PayloadSize)
	kept, err := base64.StdEncoding.DecodeString(r.PayloadBase64)
	require.NoError(t, err)
	require.Equal(t, payload[:MaxPayloadKept], kept)
	sum := sha256.Sum256(payload)
	require.Equal(t, hex.EncodeToString(sum[:]), r.PayloadSHA256)
	require.Equal(t, "result:9", r.MsgID())
	require.False(t, r.Acknowledged())
}

// The result schema is a contract with every consumer of the result subjects:
// the golden files pin its field names.
func TestResultGolden(t *testing.T) {
	t.Parallel()
	sent := time.Date(2026, 11, 24, 1, 2, 3, 456000000, time.UTC)
	cases := map[string]Result{
		"cancelled": func() Result {
			r := NewResult(Cancel{Category: "linear", Symbol: "BTCUSDT", OrderID: "c6f055d9", OrderLinkID: "linear-004", RequestID: "r-1"}, "r-1", 12, sent.Add(-time.Second))
			r.Status, r.RetCode, r.ExchangeTime, r.Attempts, r.SentAt, r.RateLimitWaitMs, r.Deliveries = StatusCancelled, new(0), 1672217377164, 1, &sent, 250, 1
			return r
		}(),
		"not_open": func() Result {
			r := NewResult(Cancel{Category: "spot", Symbol: "ETHUSDT", OrderLinkID: "s-1"}, "ORDERS:13", 13, sent.Add(-time.Second))
			r.Status, r.RetCode, r.RetMsg, r.Attempts, r.SentAt, r.Ambiguous, r.Deliveries = StatusNotOpen, new(170213), "Order does not exist.", 2, &sent, true, 1
			return r
		}(),
		// A cancel-all redelivered after a 503: it lists what both deliveries
		// cancelled, and cannot claim that the 503'd call cancelled nothing.
		"cancel_all": func() Result {
			r := NewCancelAllResult(CancelAll{Category: "inverse", BaseCoin: "BTC", RequestID: "kill-7"}, "kill-7", 14, sent.Add(-time.Second))
			r.Status, r.RetCode, r.ExchangeTime, r.Attempts, r.SentAt, r.Ambiguous, r.Deliveries = StatusCancelled, new(0), 1672217377164, 1, &sent, true, 2
			r.Orders = []OrderRef{{OrderID: "5a8c1f2e", OrderLinkID: "inv-001"}, {OrderID: "7d04b9c3", OrderLinkID: ""}}
			r.OrdersComplete = new(false)
			return r
		}(),
		// A flatten that found nothing left: every order with its place,
		// counted per category.
		"flatten": func() Result {
			r := NewCancelAllResult(CancelAll{Scope: ScopeAccount, Account: "hedge", RequestID: "flatten-1"}, "flatten-1", 15, sent.Add(-time.Second))
			r.Status, r.RetCode, r.ExchangeTime, r.Attempts, r.SentAt, r.Deliveries = StatusCancelled, new(0), 1672217377164, 9, &sent, 1
			r.Orders = []OrderRef{
				{OrderID: "9f1e", OrderLinkID: "tp-1", Category: "spot", Symbol: "BTCUSDT"},
				{OrderID: "a2c4", Category: "linear", Symbol: "ETHPERP", SettleCoin: "USDC"},
				{OrderID: "b7d0", OrderLinkID: "inv-9", Category: "inverse", BaseCoin: "ETH"},
			}
			r.OrdersComplete, r.Complete, r.Rounds = new(true), new(true), 2
			r.Cancelled = map[string]int{"spot": 1, "linear": 1, "inverse": 1}
			return r
		}(),
	}
	for name, r := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := json.MarshalIndent(r, "", "  ")
			require.NoError(t, err)
			path := filepath.Join("testdata", "result_"+name+".golden.json")
			if os.Getenv("UPDATE_GOLDEN") != "" {
				require.NoError(t, os.WriteFile(path, append(got, '\n'), 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err)
			require.JSONEq(t, string(want), string(got))
			back, err := DecodeResult(want)
			require.NoError(t, err)
			require.Equal(t, r.RequestSeq, back.RequestSeq)
			require.Equal(t, r.Status, back.Status)
		})
	}
}

func FuzzDecodeCancel(f *testing.F) {
	for _, seed := range []string{
		`{"category":"linear","symbol":"BTCUSDT","orderId":"1"}`,
		`{"category":"spot","symbol":"BTCUSDT","orderLinkId":"x","orderFilter":"StopOrder","requestId":"r"}`,
		`{"category":"option","symbol":"BTC-27DEC24-100000-C","orderId":null,"orderLinkId":"o","replayOfSeq":3}`,
		`{"category":"linear","symbol":"BTCUSDT","orderId":"1","orderId":"1"}`,
		`[]`, ``, "\xff", `{"a":`,
	} {
		f.Add([]byte(seed))
	}
	fuzzDecode(f, DecodeCancel, func(*testing.T, Cancel) {})
}

// fuzzDecode fuzzes decode: what it refuses is ErrInvalid; whatever decodes
// must validate, pass check and survive a round trip.
func fuzzDecode[T interface{ Validate() error }](f *testing.F, decode func([]byte) (T, error), check func(*testing.T, T)) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := decode(data)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalid)
			return
		}
		require.NoError(t, c.Validate())
		check(t, c)
		b, err := json.Marshal(c)
		require.NoError(t, err)
		again, err := decode(b)
		require.NoError(t, err)
		require.Equal(t, c, again)
	})
}

func TestTheWorkersOwnMsgIDsAreReserved(t *testing.T) {
	for _, id := range []string{ResultMsgID(7), ConfirmedMsgID(7, "o-1", ""), CancelAllProgressMsgID(CancelAllProgress{RequestSeq: 7, Run: "r", Call: 1})} {
		_, reserved := ReservedMsgID(id)
		require.True(t, reserved, id)
	}
	_, fallback := ReservedMsgID(FallbackResultMsgID(7, time.Unix(0, 1)))
	require.True(t, fallback, "a result's fallback id is reserved too")
	_, reserved := ReservedMsgID("strategy-1")
	require.False(t, reserved)
}
