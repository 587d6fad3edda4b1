// Package bybittest is a simulated Bybit v5 exchange for tests, the demo, the
// benchmark and `cancel-worker sim`. It keeps an order book per category,
// verifies every signature with its own code (not package bybit's, so that a
// signing bug cannot hide by being mirrored), enforces Bybit's per-UID rolling
// rate limits with the X-Bapi-Limit* headers, and can be told to misbehave.
package bybittest

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
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

// Requests returns a copy of the request log, in the order the exchange
// handled the requests.
func (e *Exchange) Requests() []Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Request(nil), e.log...)
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

// arrivedKey carries a request's arrival time to record.
type arrivedKey struct{}

// ServeHTTP implements the endpoints the worker uses.
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
	if r.URL.Path == "/v5/private" {
		e.servePrivate(w, r)
		return
	}
	serve, ok := e.routes()[r.Method+" "+r.URL.Path]
	if !ok {
		e.writeEnvelope(w, r, Request{}, 10017, "route not found", nil, nil)
		return
	}
	serve(w, r)
}

// routes are the endpoints served, by method and path.
func (e *Exchange) routes() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"GET /v5/market/time":                    e.serveTime,
		"GET /v5/user/query-api":                 e.serveQueryAPI,
		"POST /v5/order/cancel":                  e.serveCancel,
		"POST /v5/order/cancel-batch":            e.serveCancelBatch,
		"POST /v5/order/cancel-all":              e.serveCancelAll,
		"GET /v5/order/realtime":                 e.serveOrderLookup,
		"GET /v5/order/history":                  e.serveOrderLookup,
		"POST /v5/order/disconnected-cancel-all": e.serveSetDCP,
		"GET /v5/account/query-dcp-info":         e.serveDCPInfo,
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

func readBody(r *http.Request) ([]byte, error) {
	defer r.Body.Close()
	return io.ReadAll(io.LimitReader(r.Body, 1<<20))
}
