package bybit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Final order statuses: the order will not change again.
var finalStatuses = map[string]bool{
	"Cancelled": true, "PartiallyFilledCanceled": true, "Filled": true, "Deactivated": true, "Rejected": true,
}

// FinalStatus reports whether an orderStatus is one an order never leaves.
func FinalStatus(s string) bool { return finalStatuses[s] }

// Order is an order's state as Bybit reports it, over REST or the private
// WebSocket.
type Order struct {
	Category    string `json:"category"`
	Symbol      string `json:"symbol"`
	OrderID     string `json:"orderId"`
	OrderLinkID string `json:"orderLinkId"`
	OrderStatus string `json:"orderStatus"`
	CancelType  string `json:"cancelType"`
	// StopOrderType says which kind a conditional order is ("" for a
	// normal one): Stop, tpslOrder, OcoOrder, BidirectionalTpslOrder, ...
	StopOrderType string `json:"stopOrderType"`
	// Qty is the order's quantity; CumExecQty how much of it filled (a
	// derivatives order can be Cancelled with an executed quantity);
	// LeavesQty what is left open ("0" once closed); AvgPrice the average
	// fill price ("" or "0" without a fill). Decimal strings, as Bybit
	// sends them.
	Qty        string `json:"qty"`
	CumExecQty string `json:"cumExecQty"`
	LeavesQty  string `json:"leavesQty"`
	AvgPrice   string `json:"avgPrice"`
	// UpdatedTime is Bybit's update time (ms); Bybit sends it as a string.
	UpdatedTime Millis `json:"updatedTime"`
}

// Millis is a time in ms that Bybit sends as a string ("" or a number are
// read too).
type Millis int64

// UnmarshalJSON reads "1672364262457", 1672364262457 or "".
func (m *Millis) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*m = 0
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("bybit: time %s is not milliseconds", b)
	}
	*m = Millis(n)
	return nil
}

// OrderQuery names one order: Category and Symbol, and OrderID or
// OrderLinkID.
type OrderQuery struct {
	Category    string
	Symbol      string
	OrderID     string
	OrderLinkID string
	// BaseCoin and SettleCoin narrow a lookup without a symbol (an order
	// a cancel-all cancelled).
	BaseCoin   string
	SettleCoin string
}

func (q OrderQuery) encode() string {
	v := url.Values{"category": {q.Category}, "limit": {"1"}}
	for k, val := range map[string]string{"symbol": q.Symbol, "baseCoin": q.BaseCoin, "settleCoin": q.SettleCoin} {
		if val != "" {
			v.Set(k, val)
		}
	}
	if q.OrderID != "" {
		v.Set("orderId", q.OrderID)
	} else {
		v.Set("orderLinkId", q.OrderLinkID)
	}
	return v.Encode()
}

// Endpoint names of the order lookups (as in the rate limits).
const (
	EndpointOrderRealtime = "/v5/order/realtime"
	EndpointOrderHistory  = "/v5/order/history"
)

// Lookup is the answer of an order lookup.
type Lookup struct {
	Order Order
	// Found is false when Bybit does not list the order.
	Found     bool
	RateLimit RateLimit
}

// OpenOrRecentOrder asks GET /v5/order/realtime (open orders and recently
// closed ones), signed over the query string.
func (c *Client) OpenOrRecentOrder(ctx context.Context, q OrderQuery) (Lookup, error) {
	return c.lookup(ctx, EndpointOrderRealtime, q)
}

// HistoricOrder asks GET /v5/order/history.
func (c *Client) HistoricOrder(ctx context.Context, q OrderQuery) (Lookup, error) {
	return c.lookup(ctx, EndpointOrderHistory, q)
}

func (c *Client) lookup(ctx context.Context, path string, q OrderQuery) (Lookup, error) {
	if q.Category == "" || (q.OrderID == "" && q.OrderLinkID == "") {
		return Lookup{}, fmt.Errorf("bybit: %s needs a category and an orderId or orderLinkId", path)
	}
	resp, err := c.do(ctx, http.MethodGet, path, q.encode(), nil, true)
	if err != nil {
		return Lookup{}, err
	}
	var out struct {
		Category string  `json:"category"`
		List     []Order `json:"list"`
	}
	if err := json.Unmarshal(resp.Result, &out); err != nil {
		return Lookup{RateLimit: resp.RateLimit}, &HTTPError{StatusCode: http.StatusOK, Body: "unreadable " + path + " result: " + err.Error(), RateLimit: resp.RateLimit}
	}
	for _, o := range out.List {
		if (q.OrderID != "" && o.OrderID == q.OrderID) || (q.OrderID == "" && o.OrderLinkID == q.OrderLinkID) {
			if o.Category == "" {
				o.Category = q.Category
			}
			return Lookup{Order: o, Found: true, RateLimit: resp.RateLimit}, nil
		}
	}
	return Lookup{RateLimit: resp.RateLimit}, nil
}

// OpenOrdersQuery lists open orders of a category with GET
// /v5/order/realtime (docs/v5/order/open-order.mdx): linear needs one of
// Symbol, BaseCoin or SettleCoin; spot takes no SettleCoin; OrderFilter
// empty lists every kind.
type OpenOrdersQuery struct {
	Category    string
	Symbol      string
	BaseCoin    string
	SettleCoin  string
	OrderFilter string
	// Limit is the page size, 1 to 50 (0: 50).
	Limit int
	// Cursor is the NextPageCursor of the page before.
	Cursor string
}

// OpenOrdersPage is one page of open orders, newest first.
type OpenOrdersPage struct {
	Orders []Order
	// NextPageCursor is "" on the last page.
	NextPageCursor string
	RateLimit      RateLimit
}

// OpenOrders asks for one page of open orders (openOnly 0: New,
// PartiallyFilled, Untriggered).
func (c *Client) OpenOrders(ctx context.Context, q OpenOrdersQuery) (OpenOrdersPage, error) {
	if q.Category == "" {
		return OpenOrdersPage{}, fmt.Errorf("bybit: %s needs a category", EndpointOrderRealtime)
	}
	limit := q.Limit
	if limit <= 0 || limit > 50 {
		limit = 50
	}
	v := url.Values{"category": {q.Category}, "openOnly": {"0"}, "limit": {strconv.Itoa(limit)}}
	for k, val := range map[string]string{"symbol": q.Symbol, "baseCoin": q.BaseCoin, "settleCoin": q.SettleCoin,
		"orderFilter": q.OrderFilter, "cursor": q.Cursor} {
		if val != "" {
			v.Set(k, val)
		}
	}
	resp, err := c.do(ctx, http.MethodGet, EndpointOrderRealtime, v.Encode(), nil, true)
	if err != nil {
		return OpenOrdersPage{}, err
	}
	var out struct {
		List           []Order `json:"list"`
		NextPageCursor string  `json:"nextPageCursor"`
	}
	if err := json.Unmarshal(resp.Result, &out); err != nil {
		return OpenOrdersPage{RateLimit: resp.RateLimit}, &HTTPError{StatusCode: http.StatusOK, Body: "unreadable " + EndpointOrderRealtime + " result: " + err.Error(), RateLimit: resp.RateLimit}
	}
	page := OpenOrdersPage{NextPageCursor: out.NextPageCursor, RateLimit: resp.RateLimit}
	for _, o := range out.List {
		if o.Category == "" {
			o.Category = q.Category
		}
		// The list holds open orders only; a closed one that races the
		// answer is not open any more.
		if !FinalStatus(o.OrderStatus) {
			page.Orders = append(page.Orders, o)
		}
	}
	if len(out.List) < limit {
		// Bybit may send a cursor on the last page; a short page is the end.
		page.NextPageCursor = ""
	}
	return page, nil
}
