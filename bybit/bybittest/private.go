package bybittest

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// privateState is the simulator's private WebSocket side.
type privateState struct {
	mu        sync.Mutex
	sessions  map[*privateSession]struct{}
	pushDelay time.Duration
	paused    bool
	held      []orderPush // pushes held while paused
	queue     []orderPush // pushes to deliver, in order
	draining  bool
	auths     int // successful auths, over all connections
	nextConn  int
}

type privateSession struct {
	conn       *websocket.Conn
	uid        string
	subscribed bool
	cancel     context.CancelFunc
}

type orderPush struct {
	uid   string
	order map[string]any
}

func (p *privateState) init() {
	if p.sessions == nil {
		p.sessions = map[*privateSession]struct{}{}
	}
}

// SetPushDelay delays every order update on the private stream (Bybit's
// cancel is asynchronous: the update follows the cancel's answer).
func (e *Exchange) SetPushDelay(d time.Duration) {
	e.private.mu.Lock()
	defer e.private.mu.Unlock()
	e.private.pushDelay = d
}

// PausePushes holds order updates until ResumePushes (an update that would
// otherwise race the cancel's answer, or a stream that falls silent).
func (e *Exchange) PausePushes() {
	e.private.mu.Lock()
	defer e.private.mu.Unlock()
	e.private.paused = true
}

// ResumePushes sends every held update, in order, and stops holding.
func (e *Exchange) ResumePushes() {
	e.private.mu.Lock()
	defer e.private.mu.Unlock()
	for _, p := range e.private.held {
		e.enqueueLocked(p)
	}
	e.private.held, e.private.paused = nil, false
}

// DropPrivateConnections closes every private WebSocket connection, as a
// network failure or Bybit's maintenance does. Updates of orders that change
// while no connection is up are lost, as on Bybit.
func (e *Exchange) DropPrivateConnections() {
	e.private.mu.Lock()
	sessions := make([]*privateSession, 0, len(e.private.sessions))
	for s := range e.private.sessions {
		sessions = append(sessions, s)
	}
	e.private.mu.Unlock()
	for _, s := range sessions {
		s.cancel()
		s.conn.CloseNow()
	}
}

// PrivateAuths counts successful private WebSocket auths (one per
// connection that got that far).
func (e *Exchange) PrivateAuths() int {
	e.private.mu.Lock()
	defer e.private.mu.Unlock()
	return e.private.auths
}

// PrivateSubscribers counts connections subscribed to order now.
func (e *Exchange) PrivateSubscribers() int {
	e.private.mu.Lock()
	defer e.private.mu.Unlock()
	n := 0
	for s := range e.private.sessions {
		if s.subscribed {
			n++
		}
	}
	return n
}

// cancelLocked applies a cancel Bybit accepted: the order is cancelled, or
// filled first when it was set to.
func (e *Exchange) cancelLocked(o *Order) {
	switch {
	case o.FillOnCancel:
		o.Status, o.CancelType, o.CumExecQty = "Filled", "UNKNOWN", o.Qty
		if o.AvgPrice == "" {
			o.AvgPrice = o.Price
		}
	case o.Category == "spot" && o.CumExecQty != "0":
		// Spot reports a partly filled order it cancelled so; derivatives
		// report Cancelled with the executed quantity.
		o.Status, o.CancelType = "PartiallyFilledCanceled", "CancelByUser"
	default:
		o.Status, o.CancelType = "Cancelled", "CancelByUser"
	}
	e.changedLocked(o)
}

// changedLocked stamps an order's update and pushes it to the private
// streams after the push delay.
func (e *Exchange) changedLocked(o *Order) {
	o.UpdatedTime = e.nowLocked().UnixMilli()
	p := orderPush{uid: o.UID, order: orderJSON(o)}
	e.private.mu.Lock()
	defer e.private.mu.Unlock()
	switch {
	case e.private.paused:
		e.private.held = append(e.private.held, p)
	case e.private.pushDelay > 0:
		time.AfterFunc(e.private.pushDelay, func() {
			e.private.mu.Lock()
			defer e.private.mu.Unlock()
			e.enqueueLocked(p)
		})
	default:
		e.enqueueLocked(p)
	}
}

// enqueueLocked queues an update for the one goroutine that delivers them in
// order (started when there is something to deliver, gone when there is
// not).
func (e *Exchange) enqueueLocked(p orderPush) {
	e.private.queue = append(e.private.queue, p)
	if !e.private.draining {
		e.private.draining = true
		go e.drain()
	}
}

func (e *Exchange) drain() {
	for {
		e.private.mu.Lock()
		if len(e.private.queue) == 0 {
			e.private.draining = false
			e.private.mu.Unlock()
			return
		}
		p := e.private.queue[0]
		e.private.queue = e.private.queue[1:]
		e.private.mu.Unlock()
		e.deliver(p)
	}
}

// open reports whether an order can still be cancelled.
func (o *Order) open() bool {
	return o.Status == "New" || o.Status == "PartiallyFilled" || o.Status == "Untriggered"
}

// leavesQty is what is left to fill: Qty - CumExecQty while open, 0 once
// the order is closed.
func (o *Order) leavesQty() string {
	if !o.open() {
		return "0"
	}
	q, err1 := strconv.ParseFloat(o.Qty, 64)
	c, err2 := strconv.ParseFloat(o.CumExecQty, 64)
	if err1 != nil || err2 != nil || c >= q {
		return "0"
	}
	return strconv.FormatFloat(q-c, 'f', -1, 64)
}

// stopOrderTypes are the stopOrderType an order of each Kind reports.
var stopOrderTypes = map[string]string{
	"Order": "", "StopOrder": "Stop", "tpslOrder": "tpslOrder", "OcoOrder": "OcoOrder", "BidirectionalTpslOrder": "BidirectionalTpslOrder",
}

// orderJSON is an order as Bybit reports it in GET /v5/order/realtime and
// /history and in the private order topic (docs/v5/order/open-order.mdx,
// docs/v5/websocket/private/order.mdx): every field, so that SDKs that look
// at one (ccxt tells a contract order from a spot one by tpslMode) see
// Bybit's shape.
func orderJSON(o *Order) map[string]any {
	cancelType := o.CancelType
	if cancelType == "" {
		cancelType = "UNKNOWN"
	}
	avgPrice := o.AvgPrice
	if avgPrice == "" {
		avgPrice = "0"
	}
	price, _ := strconv.ParseFloat(o.Price, 64)
	cum, _ := strconv.ParseFloat(o.CumExecQty, 64)
	leaves, _ := strconv.ParseFloat(o.leavesQty(), 64)
	m := map[string]any{
		"category": o.Category, "symbol": o.Symbol, "orderId": o.OrderID, "orderLinkId": o.OrderLinkID,
		"blockTradeId": "", "side": o.Side, "orderType": o.OrderType, "price": o.Price, "qty": o.Qty,
		"orderStatus": o.Status, "cancelType": cancelType, "rejectReason": "EC_NoError",
		"avgPrice": avgPrice, "leavesQty": o.leavesQty(), "leavesValue": strconv.FormatFloat(leaves*price, 'f', -1, 64),
		"cumExecQty": o.CumExecQty, "cumExecValue": strconv.FormatFloat(cum*price, 'f', -1, 64), "cumExecFee": "0",
		"cumFeeDetail": map[string]string{}, "feeCurrency": "", "closedPnl": "0",
		"timeInForce": "GTC", "stopOrderType": stopOrderTypes[o.Kind], "orderIv": "", "triggerPrice": "", "triggerBy": "",
		"triggerDirection": 0, "takeProfit": "", "stopLoss": "", "tpTriggerBy": "", "slTriggerBy": "",
		"tpLimitPrice": "", "slLimitPrice": "", "lastPriceOnCreated": "", "reduceOnly": false, "closeOnTrigger": false,
		"placeType": "", "smpType": "None", "smpGroup": 0, "smpOrderId": "", "positionIdx": 0, "isLeverage": "",
		"ocoTriggerBy": "", "marketUnit": "", "slippageToleranceType": "", "slippageTolerance": "",
		"createType": "CreateByUser", "rpiTakerAccess": false, "rpiMatchedQty": "0",
		"createdTime": strconv.FormatInt(o.CreatedTime, 10), "updatedTime": strconv.FormatInt(o.UpdatedTime, 10),
	}
	if o.Category == "spot" {
		m["isLeverage"] = "0"
		m["marketUnit"] = ""
	} else {
		// Only a contract order has tpslMode (ccxt reads a spot order
		// from its absence).
		m["tpslMode"] = ""
		if o.Category == "linear" || o.Category == "inverse" {
			m["tpslMode"] = "Full"
		}
	}
	return m
}

// deliver sends one update to every subscribed session of its UID.
func (e *Exchange) deliver(p orderPush) {
	e.private.mu.Lock()
	var to []*privateSession
	for s := range e.private.sessions {
		if s.subscribed && (p.uid == "" || p.uid == s.uid) {
			to = append(to, s)
		}
	}
	e.private.mu.Unlock()
	e.mu.Lock()
	now := e.nowLocked().UnixMilli()
	e.mu.Unlock()
	msg := map[string]any{"id": strconv.FormatInt(now, 10), "topic": "order", "creationTime": now, "data": []any{p.order}}
	for _, s := range to {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = wsjson.Write(ctx, s.conn, msg)
		cancel()
	}
}

type privateRequest struct {
	ReqID string            `json:"req_id"`
	Op    string            `json:"op"`
	Args  []json.RawMessage `json:"args"`
}

// servePrivate is the private WebSocket: auth (key, expiry in ms, signature of
// "GET/realtime"+expires, checked with the simulator's own code), subscribe
// to order, ping/pong, and order pushes.
func (e *Exchange) servePrivate(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	s := &privateSession{conn: conn, cancel: cancel}
	e.private.mu.Lock()
	e.private.init()
	e.private.sessions[s] = struct{}{}
	e.private.nextConn++
	connID := "sim-conn-" + strconv.Itoa(e.private.nextConn)
	e.private.mu.Unlock()
	defer func() {
		e.private.mu.Lock()
		delete(e.private.sessions, s)
		e.private.mu.Unlock()
		cancel()
		conn.CloseNow()
	}()
	authed := false
	answer := func(req privateRequest, ok bool, msg string) error {
		return wsjson.Write(ctx, conn, map[string]any{"success": ok, "ret_msg": msg, "op": req.Op, "conn_id": connID, "req_id": req.ReqID})
	}
	for {
		var req privateRequest
		if err := wsjson.Read(ctx, conn, &req); err != nil {
			return
		}
		var err error
		switch req.Op {
		case "auth":
			var uid, msg string
			uid, msg = e.checkPrivateAuth(req.Args)
			if msg == "" {
				authed = true
				e.private.mu.Lock()
				s.uid = uid
				e.private.auths++
				e.private.mu.Unlock()
			}
			err = answer(req, msg == "", msg)
		case "subscribe":
			switch {
			case !authed:
				err = answer(req, false, "Request not authorized")
			case len(req.Args) != 1 || string(req.Args[0]) != `"order"`:
				err = answer(req, false, "the simulator knows only the order topic")
			default:
				e.private.mu.Lock()
				s.subscribed = true
				e.private.mu.Unlock()
				err = answer(req, true, "")
			}
		case "ping":
			err = wsjson.Write(ctx, conn, map[string]any{"req_id": req.ReqID, "op": "pong", "args": []string{strconv.FormatInt(time.Now().UnixMilli(), 10)}, "conn_id": connID})
		default:
			err = answer(req, false, "unknown op "+strconv.Quote(req.Op))
		}
		if err != nil {
			return
		}
	}
}

// checkPrivateAuth checks [apiKey, expires, signature]: the key is known, the
// expiry is in the future, and the signature of "GET/realtime"+expires
// verifies. It returns the key's UID, or why it refuses.
func (e *Exchange) checkPrivateAuth(args []json.RawMessage) (string, string) {
	if len(args) != 3 {
		return "", "Params Error: args must be [apiKey, expires, signature]"
	}
	var key, sig string
	var expires int64
	if json.Unmarshal(args[0], &key) != nil || json.Unmarshal(args[1], &expires) != nil || json.Unmarshal(args[2], &sig) != nil {
		return "", "Params Error: args must be [apiKey, expires, signature]"
	}
	e.mu.Lock()
	acct, ok := e.accounts[key]
	now := e.nowLocked()
	e.mu.Unlock()
	switch {
	case !ok:
		return "", "Invalid apikey"
	case expires <= now.UnixMilli():
		return "", "Params Error: expires is in the past"
	case !verify(acct, "GET/realtime"+strconv.FormatInt(expires, 10), sig):
		return "", "Signature verification failed"
	}
	return acct.UID, ""
}

// serveOrderLookup answers GET /v5/order/realtime (orders not NotRecent) and
// /v5/order/history (orders not Forgotten), signed over the query string.
func (e *Exchange) serveOrderLookup(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	rq := Request{Category: q.Get("category"), Symbol: q.Get("symbol"), OrderID: q.Get("orderId"), OrderLinkID: q.Get("orderLinkId")}
	acct, code, msg := e.authenticate(r, []byte(r.URL.RawQuery))
	if code != 0 {
		e.writeEnvelope(w, r, rq, code, msg, nil, nil)
		return
	}
	endpoint := "order-realtime"
	if r.URL.Path == "/v5/order/history" {
		endpoint = "order-history"
	}
	h, ok := e.takeBudget(acct.UID, endpoint, "")
	if !ok {
		e.writeEnvelope(w, r, rq, 10006, "Too many visits!", nil, h)
		return
	}
	if rq.Category == "" {
		e.writeEnvelope(w, r, rq, 10001, "params error: category is required", nil, h)
		return
	}
	e.mu.Lock()
	var o *Order
	if rq.OrderID != "" {
		o = e.books[rq.Category][rq.OrderID]
	} else if rq.OrderLinkID != "" {
		o = e.links[rq.Category][rq.OrderLinkID]
	}
	list := []any{}
	if o != nil && (rq.Symbol == "" || o.Symbol == rq.Symbol) && (acct.UID == o.UID || o.UID == "") {
		visible := !o.NotRecent
		if endpoint == "order-history" {
			visible = !o.Forgotten && !o.open()
		}
		if visible {
			list = append(list, orderJSON(o))
		}
	}
	e.mu.Unlock()
	e.writeEnvelope(w, r, rq, 0, "OK", map[string]any{"category": rq.Category, "list": list, "nextPageCursor": ""}, h)
}
