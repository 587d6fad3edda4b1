package bybittest

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
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
	conn   *websocket.Conn
	uid    string
	topics map[string]bool // subscribed (guarded by privateState.mu)
	cancel context.CancelFunc
}

// orderTopic is the topic a session gets an order's update on: the
// all-in-one "order" or the category's "order.<category>"; "" for none.
func (s *privateSession) orderTopic(category string) string {
	switch {
	case s.topics["order"]:
		return "order"
	case s.topics["order."+category]:
		return "order." + category
	}
	return ""
}

// privateTopics are the private stream's topics (docs/v5/websocket/private):
// the simulator pushes only order updates; the others are accepted and stay
// silent.
var privateTopics = map[string]bool{
	"order": true, "order.spot": true, "order.linear": true, "order.inverse": true, "order.option": true,
	"execution": true, "execution.spot": true, "execution.linear": true, "execution.inverse": true, "execution.option": true,
	"execution.fast": true, "execution.fast.spot": true, "execution.fast.linear": true, "execution.fast.inverse": true, "execution.fast.option": true,
	"position": true, "position.linear": true, "position.inverse": true, "position.option": true,
	"wallet": true, "greeks": true, "dcp.future": true, "dcp.spot": true, "dcp.option": true,
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

// SetOpenListLag makes GET /v5/order/realtime list an order as still open
// for d after it was cancelled: Bybit's cancel is asynchronous, and its
// lists follow the cancel's answer.
func (e *Exchange) SetOpenListLag(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.listLag = d
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
		if s.topics["order"] || s.topics["order.spot"] || s.topics["order.linear"] || s.topics["order.inverse"] || s.topics["order.option"] {
			n++
		}
	}
	return n
}

// cancelLocked applies a cancel Bybit accepted: the order is cancelled, or
// filled first when it was set to.
func (e *Exchange) cancelLocked(o *Order) { e.cancelAsLocked(o, "CancelByUser") }

// cancelAsLocked is cancelLocked with the cancelType to report.
func (e *Exchange) cancelAsLocked(o *Order, cancelType string) {
	o.closedAt, o.statusBefore = e.nowLocked(), o.Status
	switch {
	case o.FillOnCancel:
		o.Status, o.CancelType, o.CumExecQty = "Filled", "UNKNOWN", o.Qty
		if o.AvgPrice == "" {
			o.AvgPrice = o.Price
		}
	case o.Status == "Untriggered":
		o.Status, o.CancelType = "Deactivated", cancelType
	case o.Category == "spot" && o.CumExecQty != "0":
		// Spot reports a partly filled order it cancelled so; derivatives
		// report Cancelled with the executed quantity.
		o.Status, o.CancelType = "PartiallyFilledCanceled", cancelType
	default:
		o.Status, o.CancelType = "Cancelled", cancelType
	}
	e.changedLocked(o)
	if o.Respawn && o.Status != "Filled" {
		// A strategy that keeps quoting: a new order takes its place.
		n := *o
		n.OrderID, n.OrderLinkID, n.Status, n.CancelType, n.UpdatedTime, n.CreatedTime = "", "", "", "", 0, 0
		e.addLocked(n)
	}
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

// deliver sends one update to every session of its UID subscribed to its
// order topic.
func (e *Exchange) deliver(p orderPush) {
	category, _ := p.order["category"].(string)
	type target struct {
		s     *privateSession
		topic string
	}
	e.private.mu.Lock()
	var to []target
	for s := range e.private.sessions {
		if topic := s.orderTopic(category); topic != "" && (p.uid == "" || p.uid == s.uid) {
			to = append(to, target{s, topic})
		}
	}
	e.private.mu.Unlock()
	e.mu.Lock()
	now := e.nowLocked().UnixMilli()
	e.mu.Unlock()
	for _, t := range to {
		msg := map[string]any{"id": strconv.FormatInt(now, 10), "topic": t.topic, "creationTime": now, "data": []any{p.order}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = wsjson.Write(ctx, t.s.conn, msg)
		cancel()
	}
}

// privateRequest is one request on the private stream. req_id is echoed as
// sent (SDKs send strings or numbers).
type privateRequest struct {
	ReqID json.RawMessage   `json:"req_id"`
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
	s := &privateSession{conn: conn, cancel: cancel, topics: map[string]bool{}}
	e.private.mu.Lock()
	e.private.init()
	e.private.sessions[s] = struct{}{}
	e.private.nextConn++
	connID := "sim-conn-" + strconv.Itoa(e.private.nextConn)
	e.private.mu.Unlock()
	defer func() {
		e.private.mu.Lock()
		delete(e.private.sessions, s)
		e.dcpRecheckLocked(s.uid)
		e.private.mu.Unlock()
		cancel()
		conn.CloseNow()
	}()
	authed := false
	answer := func(req privateRequest, ok bool, msg string) error {
		m := map[string]any{"success": ok, "ret_msg": msg, "op": req.Op, "conn_id": connID}
		if len(req.ReqID) > 0 {
			m["req_id"] = req.ReqID
		}
		return wsjson.Write(ctx, conn, m)
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
		case "subscribe", "unsubscribe":
			topics, bad := topicArgs(req.Args)
			switch {
			case !authed:
				err = answer(req, false, "Request not authorized")
			case bad != "":
				err = answer(req, false, bad)
			default:
				e.private.mu.Lock()
				for _, t := range topics {
					s.topics[t] = req.Op == "subscribe"
				}
				e.dcpRecheckLocked(s.uid)
				e.private.mu.Unlock()
				err = answer(req, true, "")
			}
		case "ping":
			m := map[string]any{"op": "pong", "args": []string{strconv.FormatInt(time.Now().UnixMilli(), 10)}, "conn_id": connID}
			if len(req.ReqID) > 0 {
				m["req_id"] = req.ReqID
			}
			err = wsjson.Write(ctx, conn, m)
		default:
			err = answer(req, false, "unknown op "+strconv.Quote(req.Op))
		}
		if err != nil {
			return
		}
	}
}

// topicArgs reads a subscription's topics: strings the private stream knows;
// the all-in-one order topic and a categorised one cannot be in one request.
func topicArgs(args []json.RawMessage) ([]string, string) {
	if len(args) == 0 {
		return nil, "args must list the topics"
	}
	var topics []string
	allInOne, categorised := false, false
	for _, a := range args {
		var t string
		if json.Unmarshal(a, &t) != nil || !privateTopics[t] {
			return nil, "Invalid topic " + string(a)
		}
		allInOne = allInOne || t == "order"
		categorised = categorised || strings.HasPrefix(t, "order.")
		topics = append(topics, t)
	}
	if allInOne && categorised {
		return nil, "the all-in-one order topic and a categorised one cannot be in the same request"
	}
	return topics, ""
}

// checkPrivateAuth checks [apiKey, expires, signature]: the key is known, the
// expiry is in the future, and the signature of "GET/realtime"+expires
// verifies. It returns the key's UID, or why it refuses.
func (e *Exchange) checkPrivateAuth(args []json.RawMessage) (string, string) {
	if len(args) != 3 {
		return "", "Params Error: args must be [apiKey, expires, signature]"
	}
	var key, sig string
	expires, ok := expiresArg(args[1])
	if json.Unmarshal(args[0], &key) != nil || !ok || json.Unmarshal(args[2], &sig) != nil {
		return "", "Params Error: args must be [apiKey, expires, signature]"
	}
	e.mu.Lock()
	acct, known := e.accounts[key]
	now := e.nowLocked()
	e.mu.Unlock()
	switch {
	case !known:
		return "", "Invalid apikey"
	case expires <= now.UnixMilli():
		return "", "Params Error: expires is in the past"
	case !verify(acct, "GET/realtime"+strconv.FormatInt(expires, 10), sig):
		return "", "Signature verification failed"
	}
	return acct.UID, ""
}

// expiresArg reads auth's expiry (ms), sent as a number or as a string of
// digits (ccxt sends a string).
func expiresArg(raw json.RawMessage) (int64, bool) {
	var n int64
	if json.Unmarshal(raw, &n) == nil {
		return n, true
	}
	var str string
	if json.Unmarshal(raw, &str) != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(str, 10, 64)
	return n, err == nil
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
	lq := orderLookup{rq: rq, uid: acct.UID, history: endpoint == "order-history", byID: rq.OrderID != "" || rq.OrderLinkID != "",
		limit: 20, baseCoin: q.Get("baseCoin"), settleCoin: q.Get("settleCoin"), openOnly: q.Get("openOnly") == "1"}
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n >= 1 && n <= 50 {
		lq.limit = n
	}
	// orderFilter narrows by kind (every kind without one); the cursor is
	// how many matching orders earlier pages held.
	if f := q.Get("orderFilter"); f != "" && !lq.byID {
		if lq.kinds, ok = cancelAllKinds(rq.Category, f, ""); !ok {
			e.writeEnvelope(w, r, rq, 10001, "params error: orderFilter", nil, h)
			return
		}
	}
	lq.skip, _ = strconv.Atoi(q.Get("cursor"))
	e.mu.Lock()
	list, next := e.lookupLocked(lq)
	e.mu.Unlock()
	e.writeEnvelope(w, r, rq, 0, "OK", map[string]any{"category": rq.Category, "list": list, "nextPageCursor": next}, h)
}

// orderLookup is one order/realtime or order/history query.
type orderLookup struct {
	rq                   Request
	uid                  string
	history, byID        bool
	openOnly             bool
	limit, skip          int
	baseCoin, settleCoin string
	kinds                map[string]bool
}

// lookupLocked answers a lookup. By id: that order (realtime lists it open or
// recently closed). Without one: realtime lists the open orders (openOnly=1:
// the recently closed ones), history the closed ones; newest first, up to
// limit (20, at most 50), narrowed by symbol, baseCoin, settleCoin.
func (e *Exchange) lookupLocked(lq orderLookup) (list []any, next string) {
	list = []any{}
	matched := 0
	for _, o := range e.lookupCandidatesLocked(lq.rq) {
		if !lq.selects(o) {
			continue
		}
		o, visible := e.visibleLocked(lq, o)
		if !visible {
			continue
		}
		matched++
		if matched <= lq.skip {
			continue
		}
		if len(list) == lq.limit {
			return list, strconv.Itoa(lq.skip + lq.limit)
		}
		list = append(list, orderJSON(o))
	}
	return list, ""
}

func (e *Exchange) lookupCandidatesLocked(rq Request) []*Order {
	switch {
	case rq.OrderID != "":
		return []*Order{e.books[rq.Category][rq.OrderID]}
	case rq.OrderLinkID != "":
		return []*Order{e.links[rq.Category][rq.OrderLinkID]}
	}
	var candidates []*Order
	for _, o := range e.books[rq.Category] {
		candidates = append(candidates, o)
	}
	sort.Slice(candidates, func(i, j int) bool {
		if candidates[i].CreatedTime != candidates[j].CreatedTime {
			return candidates[i].CreatedTime > candidates[j].CreatedTime
		}
		return candidates[i].OrderID > candidates[j].OrderID
	})
	return candidates
}

// selects reports whether the lookup's filters take o.
func (lq orderLookup) selects(o *Order) bool {
	return o != nil && (lq.rq.Symbol == "" || o.Symbol == lq.rq.Symbol) && (o.UID == "" || lq.uid == o.UID) &&
		strings.HasPrefix(o.Symbol, lq.baseCoin) && (lq.settleCoin == "" || o.settles(lq.settleCoin)) &&
		(lq.kinds == nil || lq.kinds[o.Kind])
}

// visibleLocked says whether the lookup lists o, and as what.
func (e *Exchange) visibleLocked(lq orderLookup, o *Order) (*Order, bool) {
	switch {
	case lq.history:
		return o, !o.Forgotten && !o.open()
	case lq.byID:
		return o, !o.NotRecent
	case lq.openOnly:
		return o, !o.NotRecent && !o.open()
	}
	if !o.open() && e.listLag > 0 && o.statusBefore != "" && e.nowLocked().Sub(o.closedAt) < e.listLag {
		// The cancel is not in the list yet: still shown open.
		shown := *o
		shown.Status, shown.CancelType = o.statusBefore, ""
		return &shown, true
	}
	return o, o.open()
}
