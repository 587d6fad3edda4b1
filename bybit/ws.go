package bybit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// AuthError is Bybit refusing the private WebSocket's auth (a wrong key or
// signature, an expiry in the past). Reconnecting does not help.
type AuthError struct{ Msg string }

func (e *AuthError) Error() string {
	return "bybit websocket auth refused: " + e.Msg + " (check the API key and its secret or RSA key, and the clock)"
}

// OrderStreamOptions configure the private order stream.
type OrderStreamOptions struct {
	// URL is the private stream, e.g. wss://stream.bybit.com/v5/private.
	URL string
	// MaxReconnectWait caps the wait between two reconnects; default 30s.
	// A stream that carries Bybit's dead-man switch (Topics) must come back
	// within the DCP window, so its owner sets it well under the window.
	MaxReconnectWait time.Duration
	// PingInterval is how often a ping is sent; default 20s (Bybit drops a
	// connection silent for longer than about 30 s).
	PingInterval time.Duration
	// HTTPClient dials; default http.DefaultClient.
	HTTPClient *http.Client
	// OnOrders receives every push of the order topic, in order.
	OnOrders func([]Order)
	// OnState is told when the stream is up (authenticated and subscribed)
	// and when it is down, with the reason.
	OnState func(up bool, err error)
	// Topics are subscribed on every connection after order, e.g. the DCP
	// topics (DCPTopic) that make the connection count for Bybit's
	// Disconnect Cancel All. A refusal fails the connection, like order's.
	Topics []string
}

// OrderStream is an authenticated subscription to the private order topic
// that reconnects, re-authenticates and re-subscribes after any drop.
type OrderStream struct {
	c *Client
	o OrderStreamOptions

	mu    sync.Mutex
	first *websocket.Conn // from Connect, for Run to go on with
}

// OrderStream prepares the private order stream of the client's key.
func (c *Client) OrderStream(o OrderStreamOptions) *OrderStream {
	if o.PingInterval <= 0 {
		o.PingInterval = 20 * time.Second
	}
	if o.MaxReconnectWait <= 0 {
		o.MaxReconnectWait = 30 * time.Second
	}
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	if o.OnOrders == nil {
		o.OnOrders = func([]Order) {}
	}
	if o.OnState == nil {
		o.OnState = func(bool, error) {}
	}
	return &OrderStream{c: c, o: o}
}

// Check connects, authenticates and subscribes once, then disconnects: a
// start-up check that says clearly when the key is refused (*AuthError).
func (s *OrderStream) Check(ctx context.Context) error {
	conn, err := s.connect(ctx)
	if err != nil {
		return err
	}
	return conn.Close(websocket.StatusNormalClosure, "")
}

// Connect connects, authenticates and subscribes, and keeps the connection
// for Run to go on with: updates that arrive in between are not lost. It
// says clearly when the key is refused (*AuthError). Close releases the
// connection if Run is not called.
func (s *OrderStream) Connect(ctx context.Context) error {
	conn, err := s.connect(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.first != nil {
		s.first.CloseNow()
	}
	s.first = conn
	return nil
}

// Close releases a connection Connect made that Run did not take.
func (s *OrderStream) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.first != nil {
		s.first.CloseNow()
		s.first = nil
	}
}

// Run keeps the stream up until ctx ends, reconnecting with exponential
// backoff (capped at MaxReconnectWait) after any drop or refusal. The
// backoff starts afresh once a session is authenticated and subscribed: a
// stream that keeps being dropped after it came up reconnects at once each
// time, instead of staying away longer and longer.
func (s *OrderStream) Run(ctx context.Context) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = 250*time.Millisecond, s.o.MaxReconnectWait, 0
	b.InitialInterval = min(b.InitialInterval, b.MaxInterval)
	for ctx.Err() == nil {
		up, err := s.session(ctx)
		if ctx.Err() != nil {
			s.o.OnState(false, nil)
			return
		}
		s.o.OnState(false, err)
		if up {
			b.Reset() // it came up: a fresh drop
		}
		t := time.NewTimer(b.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

type wsRequest struct {
	ReqID string `json:"req_id,omitempty"`
	Op    string `json:"op"`
	Args  []any  `json:"args,omitempty"`
}

type wsMessage struct {
	ReqID   string          `json:"req_id"`
	Success *bool           `json:"success"`
	RetMsg  string          `json:"ret_msg"`
	Op      string          `json:"op"`
	Topic   string          `json:"topic"`
	Data    json.RawMessage `json:"data"`
}

// connect dials, authenticates and subscribes to order.
func (s *OrderStream) connect(ctx context.Context) (*websocket.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(dctx, s.o.URL, &websocket.DialOptions{HTTPClient: s.o.HTTPClient})
	if err != nil {
		return nil, fmt.Errorf("bybit websocket: dial %s: %w", redactURL(s.o.URL), err)
	}
	conn.SetReadLimit(1 << 22)
	expires := s.c.timestamp() + 10_000
	sig := s.c.signer.sign([]byte("GET/realtime" + strconv.FormatInt(expires, 10)))
	steps := []wsRequest{
		{ReqID: "auth", Op: "auth", Args: []any{s.c.apiKey, expires, sig}},
		{ReqID: "subscribe", Op: "subscribe", Args: []any{"order"}},
	}
	if len(s.o.Topics) > 0 {
		args := make([]any, len(s.o.Topics))
		for i, t := range s.o.Topics {
			args[i] = t
		}
		steps = append(steps, wsRequest{ReqID: "subscribe-topics", Op: "subscribe", Args: args})
	}
	for _, req := range steps {
		if err := wsjson.Write(dctx, conn, req); err != nil {
			conn.CloseNow()
			return nil, fmt.Errorf("bybit websocket: %s: %w", req.Op, err)
		}
		for {
			var m wsMessage
			if err := wsjson.Read(dctx, conn, &m); err != nil {
				conn.CloseNow()
				return nil, fmt.Errorf("bybit websocket: waiting for the %s answer: %w", req.Op, err)
			}
			if m.Op != req.Op || m.Success == nil || (m.ReqID != "" && m.ReqID != req.ReqID) {
				continue // a push or pong racing the answer
			}
			if !*m.Success {
				conn.CloseNow()
				if req.Op == "auth" {
					return nil, &AuthError{Msg: m.RetMsg}
				}
				return nil, fmt.Errorf("bybit websocket: subscribe to %v refused: %s", req.Args, m.RetMsg)
			}
			break
		}
	}
	return conn, nil
}

// session runs one connection (Connect's, or a new one) until it drops or
// ctx ends; up reports whether it was authenticated and subscribed.
func (s *OrderStream) session(ctx context.Context) (up bool, _ error) {
	s.mu.Lock()
	conn := s.first
	s.first = nil
	s.mu.Unlock()
	if conn == nil {
		var err error
		if conn, err = s.connect(ctx); err != nil {
			return false, err
		}
	}
	defer conn.CloseNow()
	s.o.OnState(true, nil)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		t := time.NewTicker(s.o.PingInterval)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				wctx, wcancel := context.WithTimeout(sctx, s.o.PingInterval)
				err := wsjson.Write(wctx, conn, wsRequest{ReqID: "ping", Op: "ping"})
				wcancel()
				if err != nil {
					cancel()
					return
				}
			}
		}
	}()
	for {
		// A pong answers every ping: silence for two intervals is a dead
		// connection.
		rctx, rcancel := context.WithTimeout(sctx, 2*s.o.PingInterval+5*time.Second)
		var m wsMessage
		err := wsjson.Read(rctx, conn, &m)
		rcancel()
		if err != nil {
			if ctx.Err() != nil {
				return true, nil
			}
			return true, fmt.Errorf("bybit websocket: connection lost: %w", err)
		}
		if m.Topic != "order" {
			continue
		}
		var orders []Order
		if err := json.Unmarshal(m.Data, &orders); err != nil {
			return true, fmt.Errorf("bybit websocket: unreadable order push: %w", err)
		}
		s.o.OnOrders(orders)
	}
}

// redactURL drops a URL's query and credentials from errors.
func redactURL(u string) string {
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	if at := strings.LastIndex(u, "@"); at >= 0 {
		if i := strings.Index(u, "://"); i >= 0 && i < at {
			u = u[:i+3] + u[at+1:]
		}
	}
	return u
}

// IsAuthError reports whether err is Bybit refusing the WebSocket auth.
func IsAuthError(err error) bool {
	var a *AuthError
	return errors.As(err, &a)
}
