package bybit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// CancelOrderRequest is the body of POST /v5/order/cancel. Either OrderID or
// OrderLinkID is required; with both, Bybit gives OrderID precedence.
type CancelOrderRequest struct {
	Category    string `json:"category"`
	Symbol      string `json:"symbol"`
	OrderID     string `json:"orderId,omitempty"`
	OrderLinkID string `json:"orderLinkId,omitempty"`
	OrderFilter string `json:"orderFilter,omitempty"`
}

// CancelOrderResult is Bybit's acknowledgement of a cancel: the request was
// accepted; the cancel itself is asynchronous.
type CancelOrderResult struct {
	OrderID     string
	OrderLinkID string
	// Time is the envelope's time (ms).
	Time      int64
	RateLimit RateLimit
}

// CancelOrder sends one signed POST /v5/order/cancel. Errors are *APIError,
// *HTTPError, *TransportError or the context's error; see ClassOf.
func (c *Client) CancelOrder(ctx context.Context, r CancelOrderRequest) (CancelOrderResult, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return CancelOrderResult{}, fmt.Errorf("bybit: encode cancel: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/v5/order/cancel", "", body, true)
	if err != nil {
		return CancelOrderResult{}, err
	}
	var out struct {
		OrderID     string `json:"orderId"`
		OrderLinkID string `json:"orderLinkId"`
	}
	if err := json.Unmarshal(resp.Result, &out); err != nil {
		// retCode 0 says the cancel was accepted: keep that, even if the
		// result object is unreadable.
		out.OrderID, out.OrderLinkID = r.OrderID, r.OrderLinkID
	}
	return CancelOrderResult{OrderID: out.OrderID, OrderLinkID: out.OrderLinkID, Time: resp.Time, RateLimit: resp.RateLimit}, nil
}

// APIKeyInfo is the part of GET /v5/user/query-api the worker checks.
type APIKeyInfo struct {
	ReadOnly    bool
	Permissions map[string][]string
	// ExpiresAt is zero when the key does not expire.
	ExpiresAt time.Time
}

// CanTrade reports whether the key may cancel orders in at least one market,
// and lists the markets it may trade.
func (k APIKeyInfo) CanTrade() (bool, []string) {
	var markets []string
	has := func(group, perm string) bool {
		for _, p := range k.Permissions[group] {
			if p == perm {
				return true
			}
		}
		return false
	}
	if has("ContractTrade", "Order") {
		markets = append(markets, "linear/inverse")
	}
	if has("Spot", "SpotTrade") {
		markets = append(markets, "spot")
	}
	if has("Options", "OptionsTrade") {
		markets = append(markets, "option")
	}
	if has("Derivatives", "DerivativesTrade") {
		markets = append(markets, "derivatives")
	}
	return !k.ReadOnly && len(markets) > 0, markets
}

// QueryAPIKey is GET /v5/user/query-api: the key's own permissions. A key of
// another environment answers 10003.
func (c *Client) QueryAPIKey(ctx context.Context) (APIKeyInfo, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v5/user/query-api", "", nil, true)
	if err != nil {
		return APIKeyInfo{}, err
	}
	var out struct {
		ReadOnly    int                 `json:"readOnly"`
		Permissions map[string][]string `json:"permissions"`
		ExpiredAt   string              `json:"expiredAt"`
	}
	if err := json.Unmarshal(resp.Result, &out); err != nil {
		return APIKeyInfo{}, fmt.Errorf("bybit: decode query-api: %w", err)
	}
	info := APIKeyInfo{ReadOnly: out.ReadOnly == 1, Permissions: out.Permissions}
	// Bybit answers "1970-01-01T00:00:00Z" for a key that never expires (one
	// bound to IPs).
	if t, err := time.Parse(time.RFC3339, out.ExpiredAt); err == nil && t.Unix() > 0 {
		info.ExpiresAt = t
	}
	return info, nil
}
