package bybit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// MaxBatch is how many orders one cancel-batch request may carry.
func MaxBatch(category string) int {
	if category == "spot" {
		return 10
	}
	return 20
}

// BatchItem is Bybit's answer for one order of a cancel-batch request, in the
// request's order.
type BatchItem struct {
	OrderID     string
	OrderLinkID string
	// Err is nil when the order's cancel was accepted; otherwise an
	// *APIError with the item's code and message (ClassOf applies).
	Err error
}

// CancelBatchResult is the answer to POST /v5/order/cancel-batch.
type CancelBatchResult struct {
	Items     []BatchItem
	Time      int64
	RateLimit RateLimit
}

// CancelBatch sends one signed POST /v5/order/cancel-batch for orders of one
// category. The top-level retCode can be 0 while items fail: each item says
// for itself. The batch budget is separate from single cancels' and is
// counted per order.
func (c *Client) CancelBatch(ctx context.Context, category string, reqs []CancelOrderRequest) (CancelBatchResult, error) {
	if len(reqs) == 0 || len(reqs) > MaxBatch(category) {
		return CancelBatchResult{}, fmt.Errorf("bybit: a %s cancel-batch takes 1 to %d orders, not %d", category, MaxBatch(category), len(reqs))
	}
	type item struct {
		Symbol      string `json:"symbol"`
		OrderID     string `json:"orderId,omitempty"`
		OrderLinkID string `json:"orderLinkId,omitempty"`
	}
	body := struct {
		Category string `json:"category"`
		Request  []item `json:"request"`
	}{Category: category}
	for _, r := range reqs {
		body.Request = append(body.Request, item{Symbol: r.Symbol, OrderID: r.OrderID, OrderLinkID: r.OrderLinkID})
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return CancelBatchResult{}, fmt.Errorf("bybit: encode cancel-batch: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/v5/order/cancel-batch", "", raw, true)
	if err != nil {
		return CancelBatchResult{}, err
	}
	return decodeBatch(resp, reqs)
}

// decodeBatch maps the per-order answers back by position.
func decodeBatch(resp *response, reqs []CancelOrderRequest) (CancelBatchResult, error) {
	var result struct {
		List []struct {
			OrderID     string `json:"orderId"`
			OrderLinkID string `json:"orderLinkId"`
		} `json:"list"`
	}
	var ext struct {
		List []struct {
			Code int    `json:"code"`
			Msg  string `json:"msg"`
		} `json:"list"`
	}
	if err := json.Unmarshal(resp.Result, &result); err != nil {
		return CancelBatchResult{}, &HTTPError{StatusCode: http.StatusOK, Body: "cancel-batch result unreadable: " + snippet(resp.Result), RateLimit: resp.RateLimit}
	}
	_ = json.Unmarshal(resp.RetExtInfo, &ext) // absent means every item succeeded
	out := CancelBatchResult{Time: resp.Time, RateLimit: resp.RateLimit, Items: make([]BatchItem, len(reqs))}
	for i, r := range reqs {
		it := BatchItem{OrderID: r.OrderID, OrderLinkID: r.OrderLinkID}
		if i < len(result.List) {
			if result.List[i].OrderID != "" {
				it.OrderID = result.List[i].OrderID
			}
			if result.List[i].OrderLinkID != "" {
				it.OrderLinkID = result.List[i].OrderLinkID
			}
		}
		switch {
		case i < len(ext.List) && ext.List[i].Code != 0:
			it.Err = &APIError{HTTPStatus: http.StatusOK, RetCode: ext.List[i].Code, RetMsg: ext.List[i].Msg, Time: resp.Time, RateLimit: resp.RateLimit}
		case i >= len(result.List) && i >= len(ext.List):
			// No answer for this order at all: the request reached Bybit, so
			// it may have been applied.
			it.Err = &HTTPError{StatusCode: http.StatusOK, Body: "cancel-batch answered fewer orders than sent"}
		}
		out.Items[i] = it
	}
	return out, nil
}
