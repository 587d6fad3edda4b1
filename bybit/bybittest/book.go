package bybittest

import (
	"fmt"
	"strings"
	"time"
)

// Order is one order in the simulated book.
type Order struct {
	Category    string
	Symbol      string
	OrderID     string
	OrderLinkID string
	// Status is New (Untriggered for a conditional Kind), Cancelled,
	// Deactivated (a conditional order cancelled before its trigger) or
	// Filled (or any orderStatus set by SetOrderStatus).
	Status string
	// UID owns the order: its updates are pushed to the private streams of
	// that UID's keys. Empty: to every private stream.
	UID string
	// FillOnCancel: the order fills just before a cancel lands; the cancel
	// is still answered retCode 0 (Bybit accepted the request) and the
	// order's final state is Filled.
	FillOnCancel bool
	// NotRecent: GET /v5/order/realtime no longer lists it (closed long
	// ago); Forgotten: /v5/order/history does not either.
	NotRecent bool
	Forgotten bool
	// CancelType and UpdatedTime (ms) are what the private stream and the
	// lookups report.
	CancelType  string
	UpdatedTime int64
	// Side (Buy), OrderType (Limit), Price (1) and Qty (1) describe the
	// order; CumExecQty (0) is how much of it filled before the cancel (a
	// partly filled order), at AvgPrice (default Price).
	Side       string
	OrderType  string
	Price      string
	Qty        string
	CumExecQty string
	AvgPrice   string
	// Kind is which orders a cancel-all's orderFilter selects: Order (the
	// default), StopOrder, tpslOrder, OcoOrder or BidirectionalTpslOrder.
	Kind string
	// CreatedTime (ms) defaults to when it was added.
	CreatedTime int64
	// SettleCoin is what a settleCoin selects it by; empty: a symbol that
	// ends with the coin (BTCUSDT settles in USDT; set USDC for ETHPERP).
	SettleCoin string
	// closedAt and statusBefore: when a cancel closed it, and its status
	// until then (SetOpenListLag).
	closedAt     time.Time
	statusBefore string
	// Respawn: once cancelled, a new order like it is placed (a strategy
	// that keeps quoting while a flatten runs).
	Respawn bool
}

// AddOrder puts an open order in the book and returns it; an empty OrderID
// is generated.
func (e *Exchange) AddOrder(o Order) Order {
	e.mu.Lock()
	defer e.mu.Unlock()
	return *e.addLocked(o)
}

func (e *Exchange) addLocked(o Order) *Order {
	if o.OrderID == "" {
		e.nextID++
		o.OrderID = fmt.Sprintf("sim-%08d-0000-4000-8000-%012d", e.nextID, e.nextID)
	}
	defaultStatus := o.Status == ""
	if defaultStatus {
		o.Status = "New"
	}
	if o.UpdatedTime == 0 {
		o.UpdatedTime = e.nowLocked().UnixMilli()
	}
	if o.CreatedTime == 0 {
		o.CreatedTime = o.UpdatedTime
	}
	for field, def := range map[*string]string{&o.Side: "Buy", &o.OrderType: "Limit", &o.Price: "1", &o.Qty: "1", &o.CumExecQty: "0", &o.Kind: "Order"} {
		if *field == "" {
			*field = def
		}
	}
	if o.Kind != "Order" && defaultStatus {
		o.Status = "Untriggered" // a conditional order waits for its trigger
	}
	if o.AvgPrice == "" && o.CumExecQty != "0" {
		o.AvgPrice = o.Price
	}
	p := &o
	if e.books[o.Category] == nil {
		e.books[o.Category] = map[string]*Order{}
		e.links[o.Category] = map[string]*Order{}
	}
	e.books[o.Category][o.OrderID] = p
	if o.OrderLinkID != "" {
		e.links[o.Category][o.OrderLinkID] = p
	}
	return p
}

// Order returns an order of the book by category and orderId.
func (e *Exchange) Order(category, orderID string) (Order, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	o, ok := e.books[category][orderID]
	if !ok {
		return Order{}, false
	}
	return *o, true
}

// SetOrderStatus changes an order's status (e.g. Filled before a cancel lands).
func (e *Exchange) SetOrderStatus(category, orderID, status string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if o, ok := e.books[category][orderID]; ok {
		o.Status = status
		e.changedLocked(o)
	}
}

// cancelOne applies a cancel to the book: orderId takes precedence over
// orderLinkId, as on Bybit.
func (e *Exchange) cancelOne(b cancelBody) (int, string, any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var o *Order
	if b.OrderID != "" {
		o = e.books[b.Category][b.OrderID]
	} else {
		o = e.links[b.Category][b.OrderLinkID]
	}
	if o == nil && e.opts.AutoCreate {
		o = e.addLocked(Order{Category: b.Category, Symbol: b.Symbol, OrderID: b.OrderID, OrderLinkID: b.OrderLinkID})
	}
	notFound := 110001
	if b.Category == "spot" {
		notFound = 170213
	}
	if o == nil || o.Symbol != b.Symbol {
		return notFound, "Order does not exist.", nil
	}
	if !o.open() {
		return notFound, "Order does not exist.", nil
	}
	e.cancelLocked(o)
	return 0, "OK", map[string]string{"orderId": o.OrderID, "orderLinkId": o.OrderLinkID}
}

// settles reports whether the order's contract settles in coin.
func (o *Order) settles(coin string) bool {
	if o.SettleCoin != "" {
		return o.SettleCoin == coin
	}
	return strings.HasSuffix(o.Symbol, coin)
}
