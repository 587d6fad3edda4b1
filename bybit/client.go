// Package bybit is a small Bybit v5 REST client for order cancellation:
// signing, the clock offset, the response envelope, typed errors and the
// rate-limit headers. It makes exactly one HTTP request per call; retrying and
// waiting are the caller's policy, helped by ClassOf, MayHaveApplied and
// RateLimitOf.
package bybit

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Base URLs of Bybit's environments.
const (
	MainnetURL = "https://api.bybit.com"
	TestnetURL = "https://api-testnet.bybit.com"
	DemoURL    = "https://api-demo.bybit.com"
)

// maxBody bounds how much of a response is read.
const maxBody = 1 << 20

// Options configure a Client.
type Options struct {
	// BaseURL is the scheme and host, e.g. TestnetURL. Required.
	BaseURL string
	// APIKey identifies the key. With it, exactly one of APISecret (an HMAC
	// key issued by Bybit) or RSAPrivateKey (a self-generated key registered
	// with Bybit) signs requests.
	APIKey        string
	APISecret     Secret
	RSAPrivateKey *rsa.PrivateKey
	// RecvWindow is sent as X-BAPI-RECV-WINDOW. Default 5s.
	RecvWindow time.Duration
	// HTTPClient is shared by every call; default: a keep-alive client with
	// Timeout.
	HTTPClient *http.Client
	// Timeout bounds one request when HTTPClient is nil. Default 10s.
	Timeout time.Duration
	// Now is the local clock; default time.Now.
	Now func() time.Time
}

// Client calls Bybit v5. It is safe for concurrent use.
type Client struct {
	baseURL    string
	apiKey     string
	signer     signer
	recvWindow int64
	http       *http.Client
	now        func() time.Time
	// offset is server time minus local time, in ms.
	offset atomic.Int64
	synced atomic.Bool
}

// NewClient validates the options and returns a client.
func NewClient(o Options) (*Client, error) {
	if o.BaseURL == "" {
		return nil, errors.New("bybit: BaseURL is required")
	}
	if !strings.HasPrefix(o.BaseURL, "http://") && !strings.HasPrefix(o.BaseURL, "https://") {
		return nil, fmt.Errorf("bybit: BaseURL %q must start with http:// or https://", o.BaseURL)
	}
	if o.RecvWindow == 0 {
		o.RecvWindow = 5 * time.Second
	}
	if o.RecvWindow < time.Millisecond || o.RecvWindow > time.Minute {
		return nil, fmt.Errorf("bybit: RecvWindow %v is outside 1ms..1m", o.RecvWindow)
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.HTTPClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 256
		tr.MaxIdleConns = 256
		o.HTTPClient = &http.Client{Transport: tr, Timeout: o.Timeout}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var sg signer = hmacSigner{secret: []byte(o.APISecret)}
	switch {
	case o.RSAPrivateKey != nil && !o.APISecret.IsZero():
		return nil, errors.New("bybit: set either APISecret or RSAPrivateKey, not both")
	case o.RSAPrivateKey != nil:
		sg = rsaSigner{key: o.RSAPrivateKey}
	}
	return &Client{
		baseURL:    strings.TrimRight(o.BaseURL, "/"),
		apiKey:     o.APIKey,
		signer:     sg,
		recvWindow: o.RecvWindow.Milliseconds(),
		http:       o.HTTPClient,
		now:        o.Now,
	}, nil
}

// BaseURL returns the host the client talks to.
func (c *Client) BaseURL() string { return c.baseURL }

// APIKey returns the (public) key id.
func (c *Client) APIKey() string { return c.apiKey }

// ClockOffset returns server time minus local time as last measured, and
// whether it was measured at all.
func (c *Client) ClockOffset() (time.Duration, bool) {
	return time.Duration(c.offset.Load()) * time.Millisecond, c.synced.Load()
}

// timestamp is the local clock corrected by the measured offset, in ms.
func (c *Client) timestamp() int64 {
	return c.now().UnixMilli() + c.offset.Load()
}

// envelope is Bybit's response wrapper.
type envelope struct {
	RetCode    *int            `json:"retCode"`
	RetMsg     string          `json:"retMsg"`
	Result     json.RawMessage `json:"result"`
	RetExtInfo json.RawMessage `json:"retExtInfo"`
	Time       int64           `json:"time"`
}

// response is a successful (retCode 0) envelope and its transport facts.
type response struct {
	envelope
	RateLimit RateLimit
}

// do sends one request. Signed requests are signed over exactly the bytes
// sent: the body for POST, the raw query string for GET.
func (c *Client) do(ctx context.Context, method, path, query string, body []byte, signed bool) (*response, error) {
	url := c.baseURL + path
	if query != "" {
		url += "?" + query
	}
	var rdr io.Reader
	if body != nil {
		rdr = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rdr)
	if err != nil {
		return nil, fmt.Errorf("bybit: build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if signed {
		ts := c.timestamp()
		payload := body
		if method == http.MethodGet {
			payload = []byte(query)
		}
		req.Header.Set("X-BAPI-API-KEY", c.apiKey)
		req.Header.Set("X-BAPI-TIMESTAMP", strconv.FormatInt(ts, 10))
		req.Header.Set("X-BAPI-RECV-WINDOW", strconv.FormatInt(c.recvWindow, 10))
		req.Header.Set("X-BAPI-SIGN", c.signer.sign(signPayload(ts, c.apiKey, c.recvWindow, payload)))
		req.Header.Set("X-BAPI-SIGN-TYPE", "2")
	}

	var written atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				written.Store(true)
			}
		},
	}))
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !written.Load() {
			return nil, ctxErr
		}
		return nil, &TransportError{Err: scrubURL(err), Written: written.Load()}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, &TransportError{Err: scrubURL(err), Written: true}
	}
	res, err := decodeResponse(resp.StatusCode, resp.Header, raw)
	c.toLocalClock(res, err)
	return res, err
}

// decodeResponse turns an HTTP answer into a successful envelope or a typed
// error. It is the one place that interprets Bybit's answers.
func decodeResponse(status int, h http.Header, raw []byte) (*response, error) {
	rl := ParseRateLimit(h)
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil || env.RetCode == nil {
		return nil, &HTTPError{StatusCode: status, Body: snippet(raw), RateLimit: rl}
	}
	if *env.RetCode != 0 {
		return nil, &APIError{HTTPStatus: status, RetCode: *env.RetCode, RetMsg: env.RetMsg, Time: env.Time, RateLimit: rl}
	}
	if status != http.StatusOK {
		return nil, &HTTPError{StatusCode: status, Body: snippet(raw), RateLimit: rl}
	}
	return &response{envelope: env, RateLimit: rl}, nil
}

func snippet(b []byte) string {
	const n = 256
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

// scrubURL drops the URL from net/http's errors: it may carry a query string,
// and the operator already knows the host.
func scrubURL(err error) error {
	var uerr interface{ Unwrap() error }
	if errors.As(err, &uerr) {
		if inner := uerr.Unwrap(); inner != nil {
			var netErr net.Error
			if errors.As(inner, &netErr) && netErr.Timeout() {
				return fmt.Errorf("timeout: %w", inner)
			}
			return inner
		}
	}
	return err
}

// ServerTime is GET /v5/market/time.
func (c *Client) ServerTime(ctx context.Context) (time.Time, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v5/market/time", "", nil, false)
	if err != nil {
		return time.Time{}, err
	}
	var r struct {
		TimeSecond string `json:"timeSecond"`
		TimeNano   string `json:"timeNano"`
	}
	if err := json.Unmarshal(resp.Result, &r); err != nil {
		return time.Time{}, fmt.Errorf("bybit: decode server time: %w", err)
	}
	if ns, err := strconv.ParseInt(r.TimeNano, 10, 64); err == nil && ns > 0 {
		return time.Unix(0, ns), nil
	}
	if s, err := strconv.ParseInt(r.TimeSecond, 10, 64); err == nil && s > 0 {
		return time.Unix(s, 0), nil
	}
	if resp.Time > 0 {
		return time.UnixMilli(resp.Time), nil
	}
	return time.Time{}, errors.New("bybit: server time answer has no time")
}

// SyncClock measures the offset between the local clock and Bybit's and uses
// it for every later timestamp. The server's time is compared with the middle
// of the round trip.
func (c *Client) SyncClock(ctx context.Context) (time.Duration, error) {
	t0 := c.now()
	st, err := c.ServerTime(ctx)
	if err != nil {
		return 0, err
	}
	t1 := c.now()
	mid := t0.Add(t1.Sub(t0) / 2)
	off := st.Sub(mid).Milliseconds()
	c.offset.Store(off)
	c.synced.Store(true)
	return time.Duration(off) * time.Millisecond, nil
}
