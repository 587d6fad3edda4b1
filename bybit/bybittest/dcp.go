package bybittest

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// Disconnect Cancel All (docs/v5/order/dcp.mdx, account/dcp-info.mdx,
// websocket/private/dcp.mdx): per UID and product a window (3–300 s,
// default 10). When the last private connection of the UID subscribed to
// the product's topic (dcp.future, dcp.spot, dcp.option) is gone, a
// countdown of the window starts; a connection that subscribes again stops
// it; at its end every open order of the product's categories is cancelled
// (cancelType CancelByDCP). Every account has DCP on for every product (on
// Bybit, Bybit switches it on on request).

// DCP products and their topics and categories.
var dcpProducts = map[string]struct {
	topic      string
	categories []string
}{
	"DERIVATIVES": {"dcp.future", []string{"linear", "inverse"}},
	"SPOT":        {"dcp.spot", []string{"spot"}},
	"OPTIONS":     {"dcp.option", []string{"option"}},
}

// DCPEvent is a change of one UID's countdown for one product.
type DCPEvent struct {
	UID     string
	Product string
	// Kind is "countdown" (the last subscribed connection is gone),
	// "stopped" (a connection subscribed again in time) or "fired" (the
	// window passed; Cancelled orders were cancelled).
	Kind      string
	Window    time.Duration
	Cancelled int
}

// dcpState is guarded by privateState.mu.
type dcpState struct {
	windows map[string]int // uid/product -> seconds
	// seen: a connection of the uid subscribed the product's topic since
	// the last countdown ended; only then does losing it count.
	seen   map[string]bool
	timers map[string]*dcpTimer
	fired  int
}

type dcpTimer struct {
	t       *time.Timer
	stopped bool
}

func (d *dcpState) init() {
	if d.windows == nil {
		d.windows, d.seen, d.timers = map[string]int{}, map[string]bool{}, map[string]*dcpTimer{}
	}
}

// DCPWindow is the window (seconds) of a UID's product.
func (e *Exchange) DCPWindow(uid, product string) int {
	e.private.mu.Lock()
	defer e.private.mu.Unlock()
	return e.dcpWindowLocked(uid, product)
}

func (e *Exchange) dcpWindowLocked(uid, product string) int {
	e.dcp.init()
	if w, ok := e.dcp.windows[uid+"/"+product]; ok {
		return w
	}
	return 10
}

// DCPCountdowns counts the countdowns running now.
func (e *Exchange) DCPCountdowns() int {
	e.private.mu.Lock()
	defer e.private.mu.Unlock()
	n := 0
	for _, t := range e.dcp.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// DCPSubscribers counts the live connections of uid subscribed to the
// product's DCP topic.
func (e *Exchange) DCPSubscribers(uid, product string) int {
	e.private.mu.Lock()
	defer e.private.mu.Unlock()
	return e.dcpSubscribersLocked(uid, dcpProducts[product].topic)
}

func (e *Exchange) dcpSubscribersLocked(uid, topic string) int {
	n := 0
	for s := range e.private.sessions {
		if s.uid == uid && s.topics[topic] {
			n++
		}
	}
	return n
}

// dcpRecheckLocked starts or stops uid's countdowns after a connection
// subscribed, unsubscribed or went away.
func (e *Exchange) dcpRecheckLocked(uid string) {
	if uid == "" {
		return
	}
	e.dcp.init()
	for product, p := range dcpProducts {
		key := uid + "/" + product
		n := e.dcpSubscribersLocked(uid, p.topic)
		t := e.dcp.timers[key]
		switch {
		case n > 0:
			e.dcp.seen[key] = true
			if t != nil && !t.stopped {
				t.stopped = true
				t.t.Stop()
				delete(e.dcp.timers, key)
				e.dcpEvent(DCPEvent{UID: uid, Product: product, Kind: "stopped"})
			}
		case e.dcp.seen[key] && t == nil:
			window := time.Duration(e.dcpWindowLocked(uid, product)) * e.opts.DCPSecond
			nt := &dcpTimer{}
			nt.t = time.AfterFunc(window, func() { e.fireDCP(uid, product, nt) })
			e.dcp.timers[key] = nt
			e.dcpEvent(DCPEvent{UID: uid, Product: product, Kind: "countdown", Window: window})
		}
	}
}

func (e *Exchange) dcpEvent(ev DCPEvent) {
	if e.opts.OnDCP != nil {
		go e.opts.OnDCP(ev)
	}
}

// fireDCP ends a countdown that was not stopped: every open order of the
// product's categories of uid is cancelled.
func (e *Exchange) fireDCP(uid, product string, t *dcpTimer) {
	e.private.mu.Lock()
	key := uid + "/" + product
	if t.stopped || e.dcp.timers[key] != t {
		e.private.mu.Unlock()
		return
	}
	delete(e.dcp.timers, key)
	e.dcp.seen[key] = false
	e.dcp.fired++
	e.private.mu.Unlock()
	e.mu.Lock()
	n := 0
	for _, c := range dcpProducts[product].categories {
		for _, o := range e.books[c] {
			if o.open() && (o.UID == "" || o.UID == uid) {
				o.Respawn = false
				e.cancelAsLocked(o, "CancelByDCP")
				n++
			}
		}
	}
	e.mu.Unlock()
	e.dcpEvent(DCPEvent{UID: uid, Product: product, Kind: "fired", Cancelled: n})
}

func (e *Exchange) serveSetDCP(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "unreadable body", nil, nil)
		return
	}
	acct, code, msg := e.authenticate(r, body)
	if code != 0 {
		e.writeEnvelope(w, r, Request{}, code, msg, nil, nil)
		return
	}
	var b struct {
		Product    string `json:"product"`
		TimeWindow *int   `json:"timeWindow"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "params error: body is not JSON", nil, nil)
		return
	}
	if b.Product == "" {
		b.Product = "OPTIONS" // the documented default
	}
	if _, ok := dcpProducts[b.Product]; !ok {
		e.writeEnvelope(w, r, Request{}, 10001, "params error: product", nil, nil)
		return
	}
	if b.TimeWindow == nil || *b.TimeWindow < 3 || *b.TimeWindow > 300 {
		e.writeEnvelope(w, r, Request{}, 10001, "params error: timeWindow must be 3 to 300", nil, nil)
		return
	}
	e.private.mu.Lock()
	e.dcp.init()
	e.dcp.windows[acct.UID+"/"+b.Product] = *b.TimeWindow
	e.private.mu.Unlock()
	e.writeEnvelope(w, r, Request{}, 0, "success", nil, nil)
}

func (e *Exchange) serveDCPInfo(w http.ResponseWriter, r *http.Request) {
	acct, code, msg := e.authenticate(r, []byte(r.URL.RawQuery))
	if code != 0 {
		e.writeEnvelope(w, r, Request{}, code, msg, nil, nil)
		return
	}
	h, ok := e.takeBudget(acct.UID, "query-dcp-info", "")
	if !ok {
		e.writeEnvelope(w, r, Request{}, 10006, "Too many visits!", nil, h)
		return
	}
	var infos []map[string]string
	e.private.mu.Lock()
	for _, product := range []string{"SPOT", "DERIVATIVES", "OPTIONS"} {
		infos = append(infos, map[string]string{"product": product, "dcpStatus": "ON",
			"timeWindow": strconv.Itoa(e.dcpWindowLocked(acct.UID, product))})
	}
	e.private.mu.Unlock()
	e.writeEnvelope(w, r, Request{}, 0, "success", map[string]any{"dcpInfos": infos}, h)
}
