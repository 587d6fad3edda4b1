package bybit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// DCP products (docs/v5/order/dcp.mdx): Bybit's Disconnect Cancel All is set
// per product; DERIVATIVES covers linear and inverse.
const (
	DCPDerivatives = "DERIVATIVES"
	DCPSpot        = "SPOT"
	DCPOptions     = "OPTIONS"
)

// DCPProducts are every product, in the order the worker sets them.
var DCPProducts = []string{DCPDerivatives, DCPSpot, DCPOptions}

// DCPTopic is the private WebSocket topic a connection subscribes so that
// it counts for a product's switch (docs/v5/websocket/private/dcp.mdx):
// Bybit fires only when every connection subscribed to it is gone.
func DCPTopic(product string) string {
	switch product {
	case DCPSpot:
		return "dcp.spot"
	case DCPOptions:
		return "dcp.option"
	}
	return "dcp.future"
}

// DCP window bounds, in seconds.
const (
	MinDCPWindow = 3
	MaxDCPWindow = 300
)

// SetDCP sends POST /v5/order/disconnected-cancel-all: product's orders are
// cancelled when the account's dcp-subscribed private connections have all
// been gone for windowSeconds. Bybit says the setting takes a while to apply
// ("query or set again after 10 seconds").
func (c *Client) SetDCP(ctx context.Context, product string, windowSeconds int) (RateLimit, error) {
	if windowSeconds < MinDCPWindow || windowSeconds > MaxDCPWindow {
		return RateLimit{}, fmt.Errorf("bybit: DCP window %ds is outside [%d, %d]", windowSeconds, MinDCPWindow, MaxDCPWindow)
	}
	body, err := json.Marshal(struct {
		Product    string `json:"product"`
		TimeWindow int    `json:"timeWindow"`
	}{product, windowSeconds})
	if err != nil {
		return RateLimit{}, fmt.Errorf("bybit: encode DCP: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/v5/order/disconnected-cancel-all", "", body, true)
	if err != nil {
		return RateLimit{}, err
	}
	return resp.RateLimit, nil
}

// DCPInfo is one product's Disconnect Cancel All setting.
type DCPInfo struct {
	Product string
	// Status is "ON" when Bybit has the switch on for the product.
	Status        string
	WindowSeconds int
}

// DCPInfos asks GET /v5/account/query-dcp-info. A product Bybit has not
// switched on for the account is missing from the list (and an account
// without DCP gets an empty one).
func (c *Client) DCPInfos(ctx context.Context) ([]DCPInfo, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v5/account/query-dcp-info", "", nil, true)
	if err != nil {
		return nil, err
	}
	var out struct {
		DCPInfos []struct {
			Product    string          `json:"product"`
			DCPStatus  string          `json:"dcpStatus"`
			TimeWindow json.RawMessage `json:"timeWindow"`
		} `json:"dcpInfos"`
	}
	if err := json.Unmarshal(resp.Result, &out); err != nil {
		return nil, &HTTPError{StatusCode: http.StatusOK, Body: "unreadable query-dcp-info result: " + snippet(resp.Result), RateLimit: resp.RateLimit}
	}
	infos := make([]DCPInfo, 0, len(out.DCPInfos))
	for _, d := range out.DCPInfos {
		// Documented as a string ("10"); a number is read too.
		s := string(d.TimeWindow)
		if uq, err := strconv.Unquote(s); err == nil {
			s = uq
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, &HTTPError{StatusCode: http.StatusOK, Body: "query-dcp-info timeWindow is not a number: " + snippet(resp.Result), RateLimit: resp.RateLimit}
		}
		infos = append(infos, DCPInfo{Product: d.Product, Status: d.DCPStatus, WindowSeconds: n})
	}
	return infos, nil
}
