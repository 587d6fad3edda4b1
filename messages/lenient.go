package messages

import "encoding/json"

// Echo is what can be read from a body that may have failed strict decoding:
// each string field that is present, is a string and is not longer than
// MaxIDLen. It correlates an invalid request with its result and lets the
// replay tool show and filter requests whatever their body.
type Echo struct {
	RequestID   string
	Category    string
	Symbol      string
	OrderID     string
	OrderLinkID string
	Account     string
}

// LenientEcho reads an Echo from a JSON object; anything else gives an empty
// Echo.
func LenientEcho(data []byte) Echo {
	var v map[string]any
	if json.Unmarshal(data, &v) != nil {
		return Echo{}
	}
	str := func(k string) string {
		if s, ok := v[k].(string); ok && len(s) <= MaxIDLen {
			return s
		}
		return ""
	}
	return Echo{
		RequestID: str("requestId"), Category: str("category"), Symbol: str("symbol"),
		OrderID: str("orderId"), OrderLinkID: str("orderLinkId"), Account: str("account"),
	}
}
