// Package bybittest is a simulated Bybit v5 exchange for tests, the demo, the
// benchmark and `cancel-worker sim`. It keeps an order book per category,
// verifies every signature with its own code (not package bybit's, so that a
// signing bug cannot hide by being mirrored), enforces Bybit's per-UID rolling
// rate limits with the X-Bapi-Limit* headers, and can be told to misbehave.
package bybittest

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fixed credentials shared by the demo, the compose stack and the simulator.
// They are not secrets: they open nothing but the simulator.
const (
	DemoAPIKey    = "demo-cancel-worker-key"
	DemoAPISecret = "demo-cancel-worker-secret-not-for-production"
)

// Account is an API key the simulator accepts.
type Account struct {
	APIKey string
	// Secret verifies HMAC signatures; RSAPublicKey, when set, verifies RSA
	// ones instead.
	Secret       string
	RSAPublicKey *rsa.PublicKey
	// UID groups keys of one account: they share its rate limits.
	UID string
	// ReadOnly keys answer 10005 to a cancel.
	ReadOnly bool
	// Permissions is what GET /v5/user/query-api reports; default: trade
	// permission in every market.
	Permissions map[string][]string
	// ExpiresAt is the key's expiry; zero: it never expires (Bybit then
	// reports expiredAt "1970-01-01T00:00:00Z", as for a key bound to IPs).
	ExpiresAt time.Time
	// Classic is a classic (non-UTA) account: it has no cancel-batch
	// endpoint, which answers HTTP 404 with an empty body (as Bybit did in
	// ccxt/ccxt#23050; cancel-batch is for unified accounts only).
	Classic bool
}

// DefaultLimits are Bybit's documented per-UID limits per second of the base
// tier, keyed "endpoint/category".
func DefaultLimits() map[string]int {
	return map[string]int{
		"cancel/linear": 10, "cancel/inverse": 10, "cancel/option": 10, "cancel/spot": 20,
		"cancel-batch/linear": 10, "cancel-batch/inverse": 10, "cancel-batch/option": 10, "cancel-batch/spot": 20,
		"cancel-all/linear": 10, "cancel-all/inverse": 10, "cancel-all/option": 1, "cancel-all/spot": 20,
		"order-realtime": 50, "order-history": 50, "query-dcp-info": 5,
	}
}

// Options configure an Exchange.
type Options struct {
	// Accounts default to one account with the demo credentials.
	Accounts []Account
	// Limits per window keyed "endpoint/category" (see DefaultLimits). A
	// missing key or 0 means unlimited. Nil means DefaultLimits.
	Limits map[string]int
	// UIDLimits override Limits for one UID (keyed by UID, then like
	// Limits): an account above the base tier. X-Bapi-Limit reports them.
	UIDLimits map[string]map[string]int
	// Window is the rolling rate-limit window; default 1s.
	Window time.Duration
	// Latency delays every answer.
	Latency time.Duration
	// ClockOffset shifts the exchange's clock against the local one.
	ClockOffset time.Duration
	// OmitResetHeader leaves X-Bapi-Limit-Reset-Timestamp off 10006 answers.
	OmitResetHeader bool
	// OmitLimitHeader leaves X-Bapi-Limit off every answer, so a client
	// cannot learn the limit from it.
	OmitLimitHeader bool
	// AutoCreate answers a cancel of an unknown order as if it were open
	// (the benchmark's book has no bottom). Off: unknown orders are not open.
	AutoCreate bool
	// DCPSecond is how long one second of a Disconnect Cancel All window
	// lasts (default time.Second): tests shrink it.
	DCPSecond time.Duration
	// OnDCP is told of every change of a DCP countdown (see DCPEvent), from
	// the simulator's goroutines.
	OnDCP func(DCPEvent)
	// Demo behaves like Bybit's demo-trading service (api-demo.bybit.com,
	// docs/v5/demo.mdx), which offers only part of the API: cancel-batch for
	// linear and option only, and no GET /v5/user/query-api. What it does
	// not offer is answered retCode 10032 "Demo trading are not supported.",
	// as Bybit's demo answers endpoints it lacks (ccxt/ccxt#23232).
	Demo bool
}

// demoUnsupported is the demo-trading service's answer to what it lacks.
const demoUnsupported = "Demo trading are not supported."

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

// Request is one entry of the exchange's request log.
type Request struct {
	// Time is when the exchange answered; Arrived when the request
	// reached it (before Options.Latency).
	Time    time.Time
	Arrived time.Time
	Method  string
	Path    string
	APIKey  string
	// RemoteAddr is the client's address: its connection.
	RemoteAddr  string
	Category    string
	Symbol      string
	OrderID     string
	OrderLinkID string
	HTTPStatus  int
	RetCode     int
}

// Fault makes the next matching cancel request misbehave. Faults are used in
// the order they were injected, one per request.
type Fault struct {
	// Match selects the requests the fault applies to; nil matches all.
	Match func(category, symbol, orderID, orderLinkID string) bool
	// Apply cancels the order before answering (a lost response when
	// combined with Hangup or a Delay past the client's timeout).
	Apply bool
	// Delay holds the answer (until the client gives up, if longer).
	Delay time.Duration
	// Hangup closes the connection without an answer.
	Hangup bool
	// Status and Body replace the answer with a raw HTTP one.
	Status int
	Body   string
	// RetCode and RetMsg answer with an error envelope.
	RetCode int
	RetMsg  string
}

// Exchange is the simulated exchange; it is an http.Handler.
type Exchange struct {
	opts Options

	mu       sync.Mutex
	accounts map[string]Account
	books    map[string]map[string]*Order // category -> orderId -> order
	links    map[string]map[string]*Order // category -> orderLinkId -> order
	windows  map[string][]time.Time       // uid/endpoint/category -> accepted times
	log      []Request
	faults   []Fault
	banned   bool
	offset   time.Duration
	// cancelAllFails makes cancel-all answer success "0".
	cancelAllFails bool
	nextID         int
	limits         map[string]int
	private        privateState
	dcp            dcpState
	listLag        time.Duration
}

// New returns an exchange with an empty book.
func New(o Options) *Exchange {
	if len(o.Accounts) == 0 {
		o.Accounts = []Account{{APIKey: DemoAPIKey, Secret: DemoAPISecret, UID: "demo"}}
	}
	if o.Limits == nil {
		o.Limits = DefaultLimits()
	}
	if o.Window == 0 {
		o.Window = time.Second
	}
	if o.DCPSecond == 0 {
		o.DCPSecond = time.Second
	}
	e := &Exchange{
		opts:     o,
		accounts: map[string]Account{},
		books:    map[string]map[string]*Order{},
		links:    map[string]map[string]*Order{},
		windows:  map[string][]time.Time{},
		offset:   o.ClockOffset,
		limits:   map[string]int{},
	}
	for k, v := range o.Limits {
		e.limits[k] = v
	}
	for _, a := range o.Accounts {
		if a.UID == "" {
			a.UID = a.APIKey
		}
		e.accounts[a.APIKey] = a
	}
	return e
}

// AddAccount registers a key, or replaces the one with the same APIKey (a
// key fixed on Bybit's side: new permissions, IPs or secret).
func (e *Exchange) AddAccount(a Account) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if a.UID == "" {
		a.UID = a.APIKey
	}
	e.accounts[a.APIKey] = a
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

// Requests returns a copy of the request log, in the order the exchange
// handled the requests.
func (e *Exchange) Requests() []Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Request(nil), e.log...)
}

// InjectFault queues faults for the next matching cancel requests.
func (e *Exchange) InjectFault(f ...Fault) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = append(e.faults, f...)
}

// SetBanned makes every request answer HTTP 403 "access too frequent", as
// Bybit's IP ban does.
func (e *Exchange) SetBanned(b bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.banned = b
}

// SetClockOffset shifts the exchange's clock.
func (e *Exchange) SetClockOffset(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.offset = d
}

func (e *Exchange) nowLocked() time.Time { return time.Now().Add(e.offset) }

type envelope struct {
	RetCode    int    `json:"retCode"`
	RetMsg     string `json:"retMsg"`
	Result     any    `json:"result"`
	RetExtInfo any    `json:"retExtInfo"`
	Time       int64  `json:"time"`
}

// ServeHTTP implements the endpoints the worker uses.
// arrivedKey carries a request's arrival time to record.
type arrivedKey struct{}

func (e *Exchange) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r = r.WithContext(context.WithValue(r.Context(), arrivedKey{}, time.Now()))
	if e.opts.Latency > 0 {
		select {
		case <-time.After(e.opts.Latency):
		case <-r.Context().Done():
			return
		}
	}
	e.mu.Lock()
	banned := e.banned
	e.mu.Unlock()
	if banned {
		e.record(r, Request{HTTPStatus: http.StatusForbidden, RetCode: -1})
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte("<html><body>403 Forbidden: access too frequent</body></html>"))
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v5/market/time":
		e.serveTime(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/v5/user/query-api":
		e.serveQueryAPI(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/v5/order/cancel":
		e.serveCancel(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/v5/order/cancel-batch":
		e.serveCancelBatch(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/v5/order/cancel-all":
		e.serveCancelAll(w, r)
	case r.Method == http.MethodGet && (r.URL.Path == "/v5/order/realtime" || r.URL.Path == "/v5/order/history"):
		e.serveOrderLookup(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/v5/order/disconnected-cancel-all":
		e.serveSetDCP(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/v5/account/query-dcp-info":
		e.serveDCPInfo(w, r)
	case r.URL.Path == "/v5/private":
		e.servePrivate(w, r)
	default:
		e.writeEnvelope(w, r, Request{}, 10017, "route not found", nil, nil)
	}
}

func (e *Exchange) record(r *http.Request, q Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	q.Time = time.Now()
	q.Arrived, _ = r.Context().Value(arrivedKey{}).(time.Time)
	q.Method = r.Method
	q.Path = r.URL.Path
	if q.APIKey == "" {
		q.APIKey = r.Header.Get("X-BAPI-API-KEY")
	}
	q.RemoteAddr = r.RemoteAddr
	e.log = append(e.log, q)
}

func (e *Exchange) writeEnvelope(w http.ResponseWriter, r *http.Request, q Request, code int, msg string, result any, h http.Header) {
	if result == nil {
		result = struct{}{}
	}
	e.mu.Lock()
	now := e.nowLocked()
	e.mu.Unlock()
	q.HTTPStatus, q.RetCode = http.StatusOK, code
	e.record(r, q)
	for k, v := range h {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(envelope{RetCode: code, RetMsg: msg, Result: result, RetExtInfo: struct{}{}, Time: now.UnixMilli()})
}

func (e *Exchange) serveTime(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	now := e.nowLocked()
	e.mu.Unlock()
	e.writeEnvelope(w, r, Request{}, 0, "OK", map[string]string{
		"timeSecond": strconv.FormatInt(now.Unix(), 10),
		"timeNano":   strconv.FormatInt(now.UnixNano(), 10),
	}, nil)
}

// authenticate checks the key, the timestamp rule and the signature the way
// Bybit documents them, with code of its own.
func (e *Exchange) authenticate(r *http.Request, payload []byte) (Account, int, string) {
	key := r.Header.Get("X-BAPI-API-KEY")
	e.mu.Lock()
	acct, ok := e.accounts[key]
	now := e.nowLocked()
	e.mu.Unlock()
	if key == "" || !ok {
		return Account{}, 10003, "API key is invalid."
	}
	tsHeader := r.Header.Get("X-BAPI-TIMESTAMP")
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return acct, 10001, "invalid timestamp header"
	}
	recvHeader := r.Header.Get("X-BAPI-RECV-WINDOW")
	recv := int64(5000)
	if recvHeader != "" {
		if recv, err = strconv.ParseInt(recvHeader, 10, 64); err != nil {
			return acct, 10001, "invalid recv_window header"
		}
	}
	server := now.UnixMilli()
	if !(server-recv <= ts && ts < server+1000) {
		return acct, 10002, fmt.Sprintf("invalid request, please check your server timestamp or recv_window param. req_timestamp[%d],server_timestamp[%d],recv_window[%d]", ts, server, recv)
	}
	origin := tsHeader + key + recvHeader + string(payload)
	if !verify(acct, origin, r.Header.Get("X-BAPI-SIGN")) {
		return acct, 10004, "error sign! origin_string[" + origin + "]"
	}
	return acct, 0, ""
}

// verify checks a signature: hex HMAC-SHA256 with the secret, or base64 RSA
// PKCS#1 v1.5 over SHA-256 with the registered public key.
func verify(acct Account, origin, sig string) bool {
	if acct.RSAPublicKey != nil {
		raw, err := base64.StdEncoding.DecodeString(sig)
		if err != nil {
			return false
		}
		sum := sha256.Sum256([]byte(origin))
		return rsa.VerifyPKCS1v15(acct.RSAPublicKey, crypto.SHA256, sum[:], raw) == nil
	}
	mac := hmac.New(sha256.New, []byte(acct.Secret))
	mac.Write([]byte(origin))
	return hmac.Equal([]byte(hex.EncodeToString(mac.Sum(nil))), []byte(sig))
}

func (e *Exchange) serveQueryAPI(w http.ResponseWriter, r *http.Request) {
	if e.opts.Demo {
		e.writeEnvelope(w, r, Request{}, 10032, demoUnsupported, nil, nil)
		return
	}
	acct, code, msg := e.authenticate(r, []byte(r.URL.RawQuery))
	if code != 0 {
		e.writeEnvelope(w, r, Request{}, code, msg, nil, nil)
		return
	}
	perms := acct.Permissions
	if perms == nil {
		perms = map[string][]string{
			"ContractTrade": {"Order", "Position"}, "Spot": {"SpotTrade"}, "Options": {"OptionsTrade"},
			"Wallet": {}, "Derivatives": {"DerivativesTrade"},
		}
	}
	readOnly := 0
	if acct.ReadOnly {
		readOnly = 1
	}
	e.mu.Lock()
	now := e.nowLocked()
	e.mu.Unlock()
	expiredAt, deadlineDay := time.Unix(0, 0).UTC(), -2
	if !acct.ExpiresAt.IsZero() {
		expiredAt, deadlineDay = acct.ExpiresAt.UTC(), int(acct.ExpiresAt.Sub(now).Hours()/24)
	}
	rsaPublicKey := ""
	if acct.RSAPublicKey != nil {
		if der, err := x509.MarshalPKIXPublicKey(acct.RSAPublicKey); err == nil {
			rsaPublicKey = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		}
	}
	uid := userID(acct.UID)
	uta := 1
	if acct.Classic {
		uta = 0
	}
	// The fields of Bybit's answer (docs/v5/user/apikey-info.mdx).
	e.writeEnvelope(w, r, Request{}, 0, "", map[string]any{
		"id": strconv.FormatInt(uid, 10), "note": "bybittest", "apiKey": acct.APIKey, "readOnly": readOnly, "secret": "",
		"permissions": perms, "ips": []string{"*"}, "type": 1, "deadlineDay": deadlineDay,
		"expiredAt": expiredAt.Format(time.RFC3339), "createdAt": now.Add(-24 * time.Hour).UTC().Format(time.RFC3339),
		"unified": 0, "uta": uta, "userID": uid, "inviterID": 0, "vipLevel": "No VIP", "mktMakerLevel": "0",
		"affiliateID": 0, "rsaPublicKey": rsaPublicKey, "isMaster": true, "parentUid": "0",
		"kycLevel": "LEVEL_DEFAULT", "kycRegion": "", "userIDInt64": strconv.FormatInt(uid, 10),
		"inviterIDInt64": "0", "affiliateIDInt64": "0",
	}, nil)
}

// userID is the numeric user id the simulator reports for a UID.
func userID(uid string) int64 {
	h := fnv.New32a()
	h.Write([]byte(uid))
	return int64(h.Sum32()%90_000_000) + 10_000_000
}

// takeBudget applies the rolling-window limit of one (uid, endpoint,
// category). It returns the headers to send and whether the request may go on.
func (e *Exchange) takeBudget(uid, endpoint, category string) (http.Header, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	name := endpoint
	if category != "" {
		name += "/" + category
	}
	limit := e.limits[name]
	if n, ok := e.opts.UIDLimits[uid][name]; ok {
		limit = n
	}
	now := e.nowLocked()
	h := http.Header{}
	if limit <= 0 {
		return h, true
	}
	// Bybit's table gives linear and inverse one limit spanning both
	// columns: one window per UID for both.
	window := category
	if window == "inverse" {
		window = "linear"
	}
	key := uid + "/" + endpoint + "/" + window
	times := e.windows[key]
	cut := 0
	for cut < len(times) && !times[cut].After(now.Add(-e.opts.Window)) {
		cut++
	}
	times = times[cut:]
	if !e.opts.OmitLimitHeader {
		h.Set("X-Bapi-Limit", strconv.Itoa(limit))
	}
	if len(times) >= limit {
		e.windows[key] = times
		h.Set("X-Bapi-Limit-Status", "0")
		if !e.opts.OmitResetHeader {
			h.Set("X-Bapi-Limit-Reset-Timestamp", strconv.FormatInt(times[0].Add(e.opts.Window).UnixMilli(), 10))
		}
		return h, false
	}
	times = append(times, now)
	e.windows[key] = times
	h.Set("X-Bapi-Limit-Status", strconv.Itoa(limit-len(times)))
	h.Set("X-Bapi-Limit-Reset-Timestamp", strconv.FormatInt(now.UnixMilli(), 10))
	return h, true
}

const permissionDenied = "Permission denied, please check your API key permissions."

type cancelBody struct {
	Category    string `json:"category"`
	Symbol      string `json:"symbol"`
	OrderID     string `json:"orderId"`
	OrderLinkID string `json:"orderLinkId"`
	OrderFilter string `json:"orderFilter"`
}

func (e *Exchange) nextFault(b cancelBody) (Fault, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, f := range e.faults {
		if f.Match == nil || f.Match(b.Category, b.Symbol, b.OrderID, b.OrderLinkID) {
			e.faults = append(e.faults[:i:i], e.faults[i+1:]...)
			return f, true
		}
	}
	return Fault{}, false
}

func (e *Exchange) serveCancel(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "unreadable body", nil, nil)
		return
	}
	var b cancelBody
	if err := json.Unmarshal(body, &b); err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "params error: body is not JSON", nil, nil)
		return
	}
	q := Request{Category: b.Category, Symbol: b.Symbol, OrderID: b.OrderID, OrderLinkID: b.OrderLinkID}
	acct, code, msg := e.authenticate(r, body)
	if code != 0 {
		e.writeEnvelope(w, r, q, code, msg, nil, nil)
		return
	}
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
	body, err := readBody(r)
	if err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "unreadable body", nil, nil)
		return
	}
	var b batchBody
	if err := json.Unmarshal(body, &b); err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "params error: body is not JSON", nil, nil)
		return
	}
	acct, code, msg := e.authenticate(r, body)
	if code != 0 {
		e.writeEnvelope(w, r, Request{Category: b.Category}, code, msg, nil, nil)
		return
	}
	if acct.Classic {
		e.record(r, Request{Category: b.Category, HTTPStatus: http.StatusNotFound, RetCode: -1})
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		return
	}
	if e.opts.Demo && b.Category != "linear" && b.Category != "option" {
		e.writeEnvelope(w, r, Request{Category: b.Category}, 10032, demoUnsupported, nil, nil)
		return
	}
	if acct.ReadOnly {
		e.writeEnvelope(w, r, Request{Category: b.Category}, 10005, permissionDenied, nil, nil)
		return
	}
	max := 20
	if b.Category == "spot" {
		max = 10
	}
	if len(b.Request) == 0 || len(b.Request) > max {
		e.writeEnvelope(w, r, Request{Category: b.Category}, 10001, fmt.Sprintf("params error: request must hold 1 to %d orders", max), nil, nil)
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
	type item struct {
		Category    string `json:"category"`
		Symbol      string `json:"symbol"`
		OrderID     string `json:"orderId"`
		OrderLinkID string `json:"orderLinkId"`
	}
	type ext struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	}
	var items []item
	var exts []ext
	var h http.Header
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
		it := item{Category: c.Category, Symbol: c.Symbol}
		if res != nil {
			it.OrderID, it.OrderLinkID = res["orderId"], res["orderLinkId"]
		}
		if code == 0 {
			msg = "OK"
		}
		items = append(items, it)
		exts = append(exts, ext{Code: code, Msg: msg})
		q.RetCode = code
		e.record(r, q)
	}
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

// SetCancelAllFails makes cancel-all answer retCode 0 with success "0".
func (e *Exchange) SetCancelAllFails(fail bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cancelAllFails = fail
}

// serveCancelAll cancels the open orders of the category that the request
// selects, as Bybit documents (docs/v5/order/cancel-all.mdx): by the
// highest-priority of symbol > baseCoin (a symbol prefix) > settleCoin (a
// suffix; spot has none), and by orderFilter — spot cancels only normal
// orders without one; futures and option cancel every kind. Futures cancel
// at most 500 a call.
func (e *Exchange) serveCancelAll(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "unreadable body", nil, nil)
		return
	}
	var b struct {
		Category      string `json:"category"`
		Symbol        string `json:"symbol"`
		BaseCoin      string `json:"baseCoin"`
		SettleCoin    string `json:"settleCoin"`
		OrderFilter   string `json:"orderFilter"`
		StopOrderType string `json:"stopOrderType"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "params error: body is not JSON", nil, nil)
		return
	}
	q := Request{Category: b.Category, Symbol: b.Symbol}
	acct, code, msg := e.authenticate(r, body)
	if code != 0 {
		e.writeEnvelope(w, r, q, code, msg, nil, nil)
		return
	}
	if acct.ReadOnly {
		e.writeEnvelope(w, r, q, 10005, permissionDenied, nil, nil)
		return
	}
	futures := b.Category == "linear" || b.Category == "inverse"
	if futures && b.Symbol == "" && b.BaseCoin == "" && b.SettleCoin == "" {
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
	// Only the highest-priority selector counts.
	selects := func(o *Order) bool { return true }
	switch {
	case b.Symbol != "":
		selects = func(o *Order) bool { return o.Symbol == b.Symbol }
	case b.BaseCoin != "":
		selects = func(o *Order) bool { return strings.HasPrefix(o.Symbol, b.BaseCoin) }
	case b.SettleCoin != "" && b.Category != "spot":
		selects = func(o *Order) bool { return o.settles(b.SettleCoin) }
	}
	e.mu.Lock()
	if e.cancelAllFails {
		e.mu.Unlock()
		e.writeEnvelope(w, r, q, 0, "cancel all failed: try again", map[string]any{"list": []any{}, "success": "0"}, h)
		return
	}
	var list []map[string]string
	ids := make([]string, 0, len(e.books[b.Category]))
	for id := range e.books[b.Category] {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		o := e.books[b.Category][id]
		if !o.open() || !selects(o) || (kinds != nil && !kinds[o.Kind]) || (o.UID != "" && o.UID != acct.UID) {
			continue
		}
		if futures && len(list) == 500 {
			break
		}
		e.cancelLocked(o)
		list = append(list, map[string]string{"orderId": o.OrderID, "orderLinkId": o.OrderLinkID})
	}
	e.mu.Unlock()
	if list == nil {
		list = []map[string]string{}
	}
	e.writeEnvelope(w, r, q, 0, "OK", map[string]any{"list": list, "success": "1"}, h)
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

// serveFault answers with the fault; false means the fault only delayed the
// answer and the normal one follows.
func (e *Exchange) serveFault(w http.ResponseWriter, r *http.Request, q Request, f Fault) bool {
	if f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			q.RetCode, q.HTTPStatus = -2, 0
			e.record(r, q)
			return true
		}
	}
	switch {
	case f.Hangup:
		q.RetCode = -3
		e.record(r, q)
		hangup(w)
		return true
	case f.Status != 0:
		q.HTTPStatus, q.RetCode = f.Status, -1
		e.record(r, q)
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(f.Status)
		_, _ = w.Write([]byte(f.Body))
		return true
	case f.RetCode != 0:
		e.writeEnvelope(w, r, q, f.RetCode, f.RetMsg, nil, nil)
		return true
	}
	return false
}

func hangup(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a reset, not a polite close
	}
	_ = conn.Close()
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

func readBody(r *http.Request) ([]byte, error) {
	defer r.Body.Close()
	return io.ReadAll(io.LimitReader(r.Body, 1<<20))
}

// settles reports whether the order's contract settles in coin.
func (o *Order) settles(coin string) bool {
	if o.SettleCoin != "" {
		return o.SettleCoin == coin
	}
	return strings.HasSuffix(o.Symbol, coin)
}
