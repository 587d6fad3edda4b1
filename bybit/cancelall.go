package bybit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// CancelAllRequest is the body of POST /v5/order/cancel-all.
type CancelAllRequest struct {
	Category      string `json:"category"`
	Symbol        string `json:"symbol,omitempty"`
	BaseCoin      string `json:"baseCoin,omitempty"`
	SettleCoin    string `json:"settleCoin,omitempty"`
	OrderFilter   string `json:"orderFilter,omitempty"`
	StopOrderType string `json:"stopOrderType,omitempty"`
}

// CancelledOrder is one order a cancel-all cancelled.
type CancelledOrder struct {
	OrderID     string
	OrderLinkID string
}

// CancelAllResult is the answer to one cancel-all call.
type CancelAllResult struct {
	Orders    []CancelledOrder
	Time      int64
	RateLimit RateLimit
}

// MaxCancelAll is how many futures orders one cancel-all call cancels at
// most: a full answer means more may be left.
const MaxCancelAll = 500

// CancelAll sends one signed POST /v5/order/cancel-all. retCode 0 with
// success "0" is returned as an *APIError (permanent) carrying retMsg.
func (c *Client) CancelAll(ctx context.Context, r CancelAllRequest) (CancelAllResult, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return CancelAllResult{}, fmt.Errorf("bybit: encode cancel-all: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/v5/order/cancel-all", "", body, true)
	if err != nil {
		return CancelAllResult{}, err
	}
	var out struct {
		List []struct {
			OrderID     string `json:"orderId"`
			OrderLinkID string `json:"orderLinkId"`
		} `json:"list"`
		Success string `json:"success"`
	}
	if err := json.Unmarshal(resp.Result, &out); err != nil {
		return CancelAllResult{}, &HTTPError{StatusCode: http.StatusOK, Body: "cancel-all result unreadable: " + snippet(resp.Result), RateLimit: resp.RateLimit}
	}
	res := CancelAllResult{Time: resp.Time, RateLimit: resp.RateLimit}
	for _, o := range out.List {
		res.Orders = append(res.Orders, CancelledOrder{OrderID: o.OrderID, OrderLinkID: o.OrderLinkID})
	}
	if out.Success == "0" {
		return res, &APIError{HTTPStatus: http.StatusOK, RetCode: 0, RetMsg: "cancel-all answered success \"0\": " + resp.RetMsg, Time: resp.Time, RateLimit: resp.RateLimit}
	}
	return res, nil
}
