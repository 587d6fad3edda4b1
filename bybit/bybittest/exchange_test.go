package bybittest_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sim is a simulator and a raw, signed HTTP client of its own (not package
// bybit's), so that these tests judge the simulator by Bybit's documents.
type sim struct {
	t   *testing.T
	ex  *bybittest.Exchange
	srv *httptest.Server
}

func newSim(t *testing.T, o bybittest.Options) *sim {
	ex := bybittest.New(o)
	srv := httptest.NewServer(ex)
	t.Cleanup(srv.Close)
	return &sim{t: t, ex: ex, srv: srv}
}

type answer struct {
	RetCode    int             `json:"retCode"`
	RetMsg     string          `json:"retMsg"`
	Result     json.RawMessage `json:"result"`
	RetExtInfo json.RawMessage `json:"retExtInfo"`
}

func sign(secret, payload string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(payload))
	return hex.EncodeToString(mac.Sum(nil))
}

// call sends a signed request with key and secret: a JSON body for POST, a
// query string for GET.
func (s *sim) call(key, secret, method, path, payload string) answer {
	s.t.Helper()
	url := s.srv.URL + path
	var body io.Reader
	if method == http.MethodGet && payload != "" {
		url += "?" + payload
	} else if method == http.MethodPost {
		body = strings.NewReader(payload)
	}
	req, err := http.NewRequest(method, url, body)
	require.NoError(s.t, err)
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	req.Header.Set("X-BAPI-API-KEY", key)
	req.Header.Set("X-BAPI-TIMESTAMP", ts)
	req.Header.Set("X-BAPI-RECV-WINDOW", "5000")
	req.Header.Set("X-BAPI-SIGN", sign(secret, ts+key+"5000"+payload))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	var a answer
	require.NoError(s.t, json.NewDecoder(resp.Body).Decode(&a))
	return a
}

func (s *sim) demo(method, path, payload string) answer {
	return s.call(bybittest.DemoAPIKey, bybittest.DemoAPISecret, method, path, payload)
}

// Bybit refuses a read-only key every cancel with 10005, on every endpoint.
func TestReadOnlyKeyCannotCancelOnAnyEndpoint(t *testing.T) {
	t.Parallel()
	s := newSim(t, bybittest.Options{Accounts: []bybittest.Account{{APIKey: "ro", Secret: "ro-secret", ReadOnly: true}}})
	o := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	for path, body := range map[string]string{
		"/v5/order/cancel":       `{"category":"linear","symbol":"BTCUSDT","orderId":"` + o.OrderID + `"}`,
		"/v5/order/cancel-batch": `{"category":"linear","request":[{"symbol":"BTCUSDT","orderId":"` + o.OrderID + `"}]}`,
		"/v5/order/cancel-all":   `{"category":"linear","symbol":"BTCUSDT"}`,
	} {
		a := s.call("ro", "ro-secret", http.MethodPost, path, body)
		require.Equal(t, 10005, a.RetCode, path)
	}
	got, _ := s.ex.Order("linear", o.OrderID)
	require.Equal(t, "New", got.Status, "nothing was cancelled")
}

func cancelled(t *testing.T, a answer) []string {
	t.Helper()
	require.Zero(t, a.RetCode, a.RetMsg)
	var r struct {
		List []struct {
			OrderID string `json:"orderId"`
		} `json:"list"`
		Success string `json:"success"`
	}
	require.NoError(t, json.Unmarshal(a.Result, &r))
	require.Equal(t, "1", r.Success)
	var ids []string
	for _, o := range r.List {
		ids = append(ids, o.OrderID)
	}
	return ids
}

// docs/v5/order/cancel-all.mdx: one of symbol > baseCoin > settleCoin is
// used, in that priority; spot cancels normal orders only unless
// orderFilter says otherwise.
func TestCancelAllSelectsAsBybitDocuments(t *testing.T) {
	t.Parallel()
	s := newSim(t, bybittest.Options{})
	btc := s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT"})
	eth := s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT"})
	tpsl := s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Kind: "tpslOrder"})
	stop := s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Kind: "StopOrder"})
	require.Equal(t, "Untriggered", stop.Status)

	// symbol wins over baseCoin.
	require.Equal(t, []string{btc.OrderID}, cancelled(t, s.demo(http.MethodPost, "/v5/order/cancel-all", `{"category":"spot","symbol":"BTCUSDT","baseCoin":"ETH"}`)),
		"only the normal BTCUSDT order: symbol beats baseCoin, and spot's default filter is Order")
	require.Equal(t, []string{tpsl.OrderID}, cancelled(t, s.demo(http.MethodPost, "/v5/order/cancel-all", `{"category":"spot","orderFilter":"tpslOrder"}`)))
	require.Equal(t, []string{stop.OrderID}, cancelled(t, s.demo(http.MethodPost, "/v5/order/cancel-all", `{"category":"spot","orderFilter":"StopOrder"}`)))
	got, _ := s.ex.Order("spot", stop.OrderID)
	require.Equal(t, "Deactivated", got.Status, "a conditional order cancelled before its trigger")
	require.Equal(t, []string{eth.OrderID}, cancelled(t, s.demo(http.MethodPost, "/v5/order/cancel-all", `{"category":"spot"}`)))

	// Futures: baseCoin beats settleCoin; no filter cancels every kind.
	lin := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	linStop := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", Kind: "StopOrder"})
	ethPerp := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "ETHUSDT"})
	require.ElementsMatch(t, []string{lin.OrderID, linStop.OrderID}, cancelled(t, s.demo(http.MethodPost, "/v5/order/cancel-all", `{"category":"linear","baseCoin":"BTC","settleCoin":"USDT"}`)))
	got, _ = s.ex.Order("linear", ethPerp.OrderID)
	require.Equal(t, "New", got.Status)
}

type orderList struct {
	Category string           `json:"category"`
	List     []map[string]any `json:"list"`
}

func list(t *testing.T, a answer) orderList {
	t.Helper()
	require.Zero(t, a.RetCode, a.RetMsg)
	var l orderList
	require.NoError(t, json.Unmarshal(a.Result, &l))
	return l
}

// Orders carry Bybit's fields (docs/v5/order/open-order.mdx); tpslMode only
// on contract orders (ccxt tells them from spot by it); a cancelled order
// has nothing left; a list without an order id is the open orders.
func TestOrderLookupsAnswerAsBybit(t *testing.T) {
	t.Parallel()
	s := newSim(t, bybittest.Options{})
	lin := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", Qty: "0.010", CumExecQty: "0.004", AvgPrice: "97250.5"})
	lin2 := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "ETHUSDT"})
	spot := s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT"})

	open := list(t, s.demo(http.MethodGet, "/v5/order/realtime", "category=linear"))
	require.Len(t, open.List, 2, "the open orders")
	o := list(t, s.demo(http.MethodGet, "/v5/order/realtime", "category=linear&symbol=BTCUSDT")).List
	require.Len(t, o, 1)
	for _, f := range []string{"orderId", "orderLinkId", "symbol", "side", "orderType", "price", "qty", "orderStatus", "cancelType",
		"rejectReason", "avgPrice", "leavesQty", "leavesValue", "cumExecQty", "cumExecValue", "cumExecFee", "timeInForce",
		"stopOrderType", "triggerPrice", "takeProfit", "stopLoss", "tpslMode", "reduceOnly", "closeOnTrigger", "positionIdx",
		"smpType", "createdTime", "updatedTime", "cumFeeDetail"} {
		require.Contains(t, o[0], f)
	}
	require.Equal(t, "0.006", o[0]["leavesQty"])
	require.Equal(t, "Full", o[0]["tpslMode"])
	sp := list(t, s.demo(http.MethodGet, "/v5/order/realtime", "category=spot&orderId="+spot.OrderID)).List
	require.Len(t, sp, 1)
	require.NotContains(t, sp[0], "tpslMode", "a spot order has no tpslMode")

	require.Zero(t, s.demo(http.MethodPost, "/v5/order/cancel", `{"category":"linear","symbol":"BTCUSDT","orderId":"`+lin.OrderID+`"}`).RetCode)
	o = list(t, s.demo(http.MethodGet, "/v5/order/realtime", "category=linear&orderId="+lin.OrderID)).List
	require.Len(t, o, 1)
	require.Equal(t, "Cancelled", o[0]["orderStatus"])
	require.Equal(t, "0", o[0]["leavesQty"], "nothing is left of a cancelled order")
	require.Equal(t, "0.004", o[0]["cumExecQty"], "what filled before stays")

	open = list(t, s.demo(http.MethodGet, "/v5/order/realtime", "category=linear"))
	require.Len(t, open.List, 1)
	require.Equal(t, lin2.OrderID, open.List[0]["orderId"])
	closed := list(t, s.demo(http.MethodGet, "/v5/order/realtime", "category=linear&openOnly=1")).List
	require.Len(t, closed, 1)
	require.Equal(t, lin.OrderID, closed[0]["orderId"])
	hist := list(t, s.demo(http.MethodGet, "/v5/order/history", "category=linear")).List
	require.Len(t, hist, 1)
	require.Equal(t, lin.OrderID, hist[0]["orderId"])
}

// docs/v5/user/apikey-info.mdx's fields.
func TestQueryAPIHasBybitsFields(t *testing.T) {
	t.Parallel()
	s := newSim(t, bybittest.Options{})
	a := s.demo(http.MethodGet, "/v5/user/query-api", "")
	require.Zero(t, a.RetCode)
	var r map[string]any
	require.NoError(t, json.Unmarshal(a.Result, &r))
	for _, f := range []string{"id", "note", "apiKey", "readOnly", "secret", "permissions", "ips", "type", "deadlineDay",
		"expiredAt", "createdAt", "uta", "unified", "userID", "inviterID", "vipLevel", "mktMakerLevel", "affiliateID",
		"rsaPublicKey", "isMaster", "parentUid", "kycLevel", "kycRegion"} {
		require.Contains(t, r, f)
	}
	require.Equal(t, "1970-01-01T00:00:00Z", r["expiredAt"], "a key without expiry, as Bybit reports it")
	require.EqualValues(t, 1, r["uta"])
}

// The private stream takes what SDKs send: expires as a number or a string
// (ccxt), req_id as a string or a number (ccxt), several topics in one
// subscribe (bybit-api: ['order','execution']), and a categorised topic
// (order.linear) whose pushes carry that topic.
func TestPrivateStreamAcceptsWhatSDKsSend(t *testing.T) {
	t.Parallel()
	s := newSim(t, bybittest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(expires any, reqID any, topics ...string) *websocket.Conn {
		conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.srv.URL, "http")+"/v5/private", nil)
		require.NoError(t, err)
		t.Cleanup(func() { conn.CloseNow() })
		exp := time.Now().Add(time.Minute).UnixMilli()
		var e any = exp
		if expires == "string" {
			e = strconv.FormatInt(exp, 10)
		}
		sig := sign(bybittest.DemoAPISecret, "GET/realtime"+strconv.FormatInt(exp, 10))
		for _, req := range []map[string]any{
			{"req_id": reqID, "op": "auth", "args": []any{bybittest.DemoAPIKey, e, sig}},
			{"req_id": reqID, "op": "subscribe", "args": topics},
			{"req_id": reqID, "op": "ping"},
		} {
			require.NoError(t, wsjson.Write(ctx, conn, req))
			var resp map[string]any
			require.NoError(t, wsjson.Read(ctx, conn, &resp))
			require.NotEqual(t, false, resp["success"], "%v → %v", req, resp)
			require.Equal(t, reqID, resp["req_id"], "req_id echoed as sent")
		}
		return conn
	}
	all := dial("string", float64(7), "order", "execution")
	linear := dial("number", "sub-1", "order.linear")
	spotOnly := dial("number", float64(8), "order.spot")
	require.Eventually(t, func() bool { return s.ex.PrivateSubscribers() == 3 }, 10*time.Second, 5*time.Millisecond)

	o := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	require.Zero(t, s.demo(http.MethodPost, "/v5/order/cancel", `{"category":"linear","symbol":"BTCUSDT","orderId":"`+o.OrderID+`"}`).RetCode)
	for conn, topic := range map[*websocket.Conn]string{all: "order", linear: "order.linear"} {
		var push struct {
			Topic string           `json:"topic"`
			Data  []map[string]any `json:"data"`
		}
		require.NoError(t, wsjson.Read(ctx, conn, &push))
		require.Equal(t, topic, push.Topic)
		require.Equal(t, o.OrderID, push.Data[0]["orderId"])
		require.Equal(t, "Cancelled", push.Data[0]["orderStatus"])
		require.Equal(t, "0", push.Data[0]["leavesQty"])
	}
	// The spot-only subscriber got nothing: a ping is answered first.
	require.NoError(t, wsjson.Write(ctx, spotOnly, map[string]any{"op": "ping", "req_id": "after"}))
	var next map[string]any
	require.NoError(t, wsjson.Read(ctx, spotOnly, &next))
	require.Equal(t, "pong", next["op"])

	// All-in-one and categorised topics cannot share one request.
	bad, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.srv.URL, "http")+"/v5/private", nil)
	require.NoError(t, err)
	defer bad.CloseNow()
	exp := time.Now().Add(time.Minute).UnixMilli()
	require.NoError(t, wsjson.Write(ctx, bad, map[string]any{"op": "auth", "args": []any{bybittest.DemoAPIKey, exp, sign(bybittest.DemoAPISecret, "GET/realtime"+strconv.FormatInt(exp, 10))}}))
	var resp map[string]any
	require.NoError(t, wsjson.Read(ctx, bad, &resp))
	require.NoError(t, wsjson.Write(ctx, bad, map[string]any{"op": "subscribe", "args": []string{"order", "order.spot"}}))
	require.NoError(t, wsjson.Read(ctx, bad, &resp))
	require.Equal(t, false, resp["success"])
}

// docs/v5/demo.mdx: demo trading lists cancel, cancel-all, the order lookups
// and the private stream, cancel-batch for linear and option only, and no
// GET /v5/user/query-api; what it lacks it answers 10032.
func TestDemoModeRefusesWhatBybitsDemoRefuses(t *testing.T) {
	t.Parallel()
	s := newSim(t, bybittest.Options{Demo: true})
	require.Equal(t, 10032, s.demo(http.MethodGet, "/v5/user/query-api", "").RetCode)
	for cat, want := range map[string]int{"linear": 0, "option": 0, "spot": 10032, "inverse": 10032} {
		o := s.ex.AddOrder(bybittest.Order{Category: cat, Symbol: "BTCUSDT"})
		a := s.demo(http.MethodPost, "/v5/order/cancel-batch", `{"category":"`+cat+`","request":[{"symbol":"BTCUSDT","orderId":"`+o.OrderID+`"}]}`)
		require.Equal(t, want, a.RetCode, cat)
		if want != 0 {
			a = s.demo(http.MethodPost, "/v5/order/cancel", `{"category":"`+cat+`","symbol":"BTCUSDT","orderId":"`+o.OrderID+`"}`)
			require.Zero(t, a.RetCode, "%s: the single cancel is offered: %s", cat, a.RetMsg)
		}
		got, _ := s.ex.Order(cat, o.OrderID)
		require.Equal(t, "Cancelled", got.Status, cat)
	}
	require.Zero(t, s.demo(http.MethodGet, "/v5/market/time", "").RetCode)
	require.Zero(t, s.demo(http.MethodPost, "/v5/order/cancel-all", `{"category":"spot"}`).RetCode)
}

// A classic (non-UTA) account has no cancel-batch: HTTP 404, no body.
func TestClassicAccountHasNoBatchEndpoint(t *testing.T) {
	t.Parallel()
	s := newSim(t, bybittest.Options{Accounts: []bybittest.Account{{APIKey: "classic", Secret: "c-secret", Classic: true}}})
	o := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	body := `{"category":"linear","request":[{"symbol":"BTCUSDT","orderId":"` + o.OrderID + `"}]}`
	req, err := http.NewRequest(http.MethodPost, s.srv.URL+"/v5/order/cancel-batch", strings.NewReader(body))
	require.NoError(t, err)
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	req.Header.Set("X-BAPI-API-KEY", "classic")
	req.Header.Set("X-BAPI-TIMESTAMP", ts)
	req.Header.Set("X-BAPI-RECV-WINDOW", "5000")
	req.Header.Set("X-BAPI-SIGN", sign("c-secret", ts+"classic5000"+body))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Empty(t, raw)
	a := s.call("classic", "c-secret", http.MethodPost, "/v5/order/cancel", `{"category":"linear","symbol":"BTCUSDT","orderId":"`+o.OrderID+`"}`)
	require.Zero(t, a.RetCode, a.RetMsg)
	var info struct {
		UTA int `json:"uta"`
	}
	require.NoError(t, json.Unmarshal(s.call("classic", "c-secret", http.MethodGet, "/v5/user/query-api", "").Result, &info))
	require.Zero(t, info.UTA)
}
