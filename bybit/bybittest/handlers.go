package bybittest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
)

// demoUnsupported is the demo-trading service's answer to what it lacks.
const demoUnsupported = "Demo trading are not supported."

type cancelBody struct {
	Category    string `json:"category"`
	Symbol      string `json:"symbol"`
	OrderID     string `json:"orderId"`
	OrderLinkID string `json:"orderLinkId"`
	OrderFilter string `json:"orderFilter"`
}

func (e *Exchange) serveCancel(w http.ResponseWriter, r *http.Request) {
	var b cancelBody
	acct, ok := e.signedBody(w, r, &b, func() Request {
		return Request{Category: b.Category, Symbol: b.Symbol, OrderID: b.OrderID, OrderLinkID: b.OrderLinkID}
	})
	if !ok {
		return
	}
	q := Request{Category: b.Category, Symbol: b.Symbol, OrderID: b.OrderID, OrderLinkID: b.OrderLinkID}
	if acct.ReadOnly {
		e.writeEnvelope(w, r, q, 10005, permissionDenied, nil, nil)
		return
	}
	switch b.Category {
	case "spot", "linear", "inverse", "option":
	default:
		e.writeEnvelope(w, r, q, 10001, "params error: category", nil, nil)
		return
	}
	if b.Symbol == "" || (b.OrderID == "" && b.OrderLinkID == "") {
		e.writeEnvelope(w, r, q, 10001, "params error: symbol and orderId or orderLinkId are required", nil, nil)
		return
	}
	fault, faulty := e.nextFault(b)
	if faulty && !fault.Apply {
		if e.serveFault(w, r, q, fault) {
			return
		}
	}
	h, ok := e.takeBudget(acct.UID, "cancel", b.Category)
	if !ok {
		e.writeEnvelope(w, r, q, 10006, "Too many visits!", nil, h)
		return
	}
	code, msg, result := e.cancelOne(b)
	if faulty && fault.Apply {
		q.RetCode = code
		if e.serveFault(w, r, q, fault) {
			return
		}
	}
	e.writeEnvelope(w, r, q, code, msg, result, h)
}

type batchBody struct {
	Category string       `json:"category"`
	Request  []cancelBody `json:"request"`
}

// serveCancelBatch applies Bybit's batch accounting: each order spends one
// unit of the batch budget (separate from single cancels'), orders past the
// budget fail one by one with 10006, and the top-level retCode stays 0.
func (e *Exchange) serveCancelBatch(w http.ResponseWriter, r *http.Request) {
	var b batchBody
	acct, ok := e.signedBody(w, r, &b, func() Request { return Request{Category: b.Category} })
	if !ok {
		return
	}
	if e.refuseBatch(w, r, acct, b) {
		return
	}
	first := b.Request[0]
	first.Category = b.Category
	fault, faulty := e.nextFault(first)
	if faulty && !fault.Apply {
		if e.serveFault(w, r, Request{Category: b.Category, Symbol: first.Symbol, OrderID: first.OrderID, OrderLinkID: first.OrderLinkID}, fault) {
			return
		}
	}
	items, exts, h := e.cancelBatchItems(r, acct, b)
	if faulty && fault.Apply && e.serveFault(w, r, Request{Category: b.Category, Symbol: first.Symbol, OrderID: first.OrderID}, fault) {
		return
	}
	e.mu.Lock()
	now := e.nowLocked()
	e.mu.Unlock()
	for k, v := range h {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(envelope{RetCode: 0, RetMsg: "OK", Result: map[string]any{"list": items},
		RetExtInfo: map[string]any{"list": exts}, Time: now.UnixMilli()})
}

// refuseBatch answers a batch this account or environment does not take, or
// whose size is wrong; false: none of that.
func (e *Exchange) refuseBatch(w http.ResponseWriter, r *http.Request, acct Account, b batchBody) bool {
	q := Request{Category: b.Category}
	if acct.Classic {
		q.HTTPStatus, q.RetCode = http.StatusNotFound, -1
		e.record(r, q)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		return true
	}
	max := 20
	if b.Category == "spot" {
		max = 10
	}
	switch {
	case e.opts.Demo && b.Category != "linear" && b.Category != "option":
		e.writeEnvelope(w, r, q, 10032, demoUnsupported, nil, nil)
	case acct.ReadOnly:
		e.writeEnvelope(w, r, q, 10005, permissionDenied, nil, nil)
	case len(b.Request) == 0 || len(b.Request) > max:
		e.writeEnvelope(w, r, q, 10001, fmt.Sprintf("params error: request must hold 1 to %d orders", max), nil, nil)
	default:
		return false
	}
	return true
}

type batchItem struct {
	Category    string `json:"category"`
	Symbol      string `json:"symbol"`
	OrderID     string `json:"orderId"`
	OrderLinkID string `json:"orderLinkId"`
}

type batchExt struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
}

// cancelBatchItems cancels a batch's orders one by one, each spending one
// unit of the batch budget; h is the last one's headers.
func (e *Exchange) cancelBatchItems(r *http.Request, acct Account, b batchBody) (items []batchItem, exts []batchExt, h http.Header) {
	// Each order is logged as its own entry, so that the log reads the same
	// whichever endpoint carried a cancel.
	for _, c := range b.Request {
		c.Category = b.Category
		q := Request{Category: c.Category, Symbol: c.Symbol, OrderID: c.OrderID, OrderLinkID: c.OrderLinkID, HTTPStatus: http.StatusOK}
		var ok bool
		h, ok = e.takeBudget(acct.UID, "cancel-batch", c.Category)
		code, msg, res := 10006, "Too many visits!", map[string]string(nil)
		if ok {
			var result any
			code, msg, result = e.cancelOne(c)
			if m, isMap := result.(map[string]string); isMap {
				res = m
			}
		}
		it := batchItem{Category: c.Category, Symbol: c.Symbol}
		if res != nil {
			it.OrderID, it.OrderLinkID = res["orderId"], res["orderLinkId"]
		}
		if code == 0 {
			msg = "OK"
		}
		items = append(items, it)
		exts = append(exts, batchExt{Code: code, Msg: msg})
		q.RetCode = code
		e.record(r, q)
	}
	return items, exts, h
}

// serveCancelAll cancels the open orders of the category that the request
// selects, as Bybit documents (docs/v5/order/cancel-all.mdx): by the
// highest-priority of symbol > baseCoin (a symbol prefix) > settleCoin (a
// suffix; spot has none), and by orderFilter — spot cancels only normal
// orders without one; futures and option cancel every kind. Futures cancel
// at most 500 a call.
func (e *Exchange) serveCancelAll(w http.ResponseWriter, r *http.Request) {
	var b cancelAllBody
	acct, ok := e.signedBody(w, r, &b, func() Request { return Request{Category: b.Category, Symbol: b.Symbol} })
	if !ok {
		return
	}
	q := Request{Category: b.Category, Symbol: b.Symbol}
	if acct.ReadOnly {
		e.writeEnvelope(w, r, q, 10005, permissionDenied, nil, nil)
		return
	}
	if b.futures() && b.Symbol == "" && b.BaseCoin == "" && b.SettleCoin == "" {
		e.writeEnvelope(w, r, q, 10001, "params error: symbol, baseCoin or settleCoin is required", nil, nil)
		return
	}
	kinds, ok := cancelAllKinds(b.Category, b.OrderFilter, b.StopOrderType)
	if !ok {
		e.writeEnvelope(w, r, q, 10001, "params error: orderFilter", nil, nil)
		return
	}
	if fault, faulty := e.nextFault(cancelBody{Category: b.Category, Symbol: b.Symbol}); faulty && e.serveFault(w, r, q, fault) {
		return
	}
	h, ok := e.takeBudget(acct.UID, "cancel-all", b.Category)
	if !ok {
		e.writeEnvelope(w, r, q, 10006, "Too many visits!", nil, h)
		return
	}
	e.mu.Lock()
	if e.cancelAllFails {
		e.mu.Unlock()
		e.writeEnvelope(w, r, q, 0, "cancel all failed: try again", map[string]any{"list": []any{}, "success": "0"}, h)
		return
	}
	list := e.cancelAllLocked(b, kinds, acct.UID)
	e.mu.Unlock()
	e.writeEnvelope(w, r, q, 0, "OK", map[string]any{"list": list, "success": "1"}, h)
}

type cancelAllBody struct {
	Category      string `json:"category"`
	Symbol        string `json:"symbol"`
	BaseCoin      string `json:"baseCoin"`
	SettleCoin    string `json:"settleCoin"`
	OrderFilter   string `json:"orderFilter"`
	StopOrderType string `json:"stopOrderType"`
}

func (b cancelAllBody) futures() bool { return b.Category == "linear" || b.Category == "inverse" }

// selects reports whether the cancel-all takes o: only the highest-priority
// selector counts.
func (b cancelAllBody) selects(o *Order) bool {
	switch {
	case b.Symbol != "":
		return o.Symbol == b.Symbol
	case b.BaseCoin != "":
		return strings.HasPrefix(o.Symbol, b.BaseCoin)
	case b.SettleCoin != "" && b.Category != "spot":
		return o.settles(b.SettleCoin)
	}
	return true
}

// cancelAllLocked cancels the open orders of uid that b and kinds (nil:
// every kind) select, in id order, at most 500 for futures.
func (e *Exchange) cancelAllLocked(b cancelAllBody, kinds map[string]bool, uid string) []map[string]string {
	list := []map[string]string{}
	ids := make([]string, 0, len(e.books[b.Category]))
	for id := range e.books[b.Category] {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		o := e.books[b.Category][id]
		if !o.open() || !b.selects(o) || (kinds != nil && !kinds[o.Kind]) || (o.UID != "" && o.UID != uid) {
			continue
		}
		if b.futures() && len(list) == 500 {
			break
		}
		e.cancelLocked(o)
		list = append(list, map[string]string{"orderId": o.OrderID, "orderLinkId": o.OrderLinkID})
	}
	return list
}

// cancelAllKinds is which order kinds a cancel-all's orderFilter selects
// (nil: every kind), and whether the filter is valid for the category.
func cancelAllKinds(category, filter, stopOrderType string) (map[string]bool, bool) {
	conditional := map[string]bool{"StopOrder": true, "tpslOrder": true, "OcoOrder": true, "BidirectionalTpslOrder": true}
	switch category {
	case "spot":
		if filter == "" {
			filter = "Order" // normal orders only, unless told otherwise
		}
		if filter != "Order" && !conditional[filter] {
			return nil, false
		}
		return map[string]bool{filter: true}, true
	case "linear", "inverse", "option":
		switch {
		case filter == "":
			return nil, true
		case filter == "Order" || (filter == "OpenOrder" && category != "option"):
			return map[string]bool{"Order": true}, true
		case filter == "StopOrder" && stopOrderType == "Stop":
			return map[string]bool{"StopOrder": true}, true
		case filter == "StopOrder":
			return conditional, true
		}
	}
	return nil, false
}
