package messages

import (
	"strconv"
	"unicode"
)

// Categories Bybit v5 accepts for a cancel.
const (
	CategorySpot    = "spot"
	CategoryLinear  = "linear"
	CategoryInverse = "inverse"
	CategoryOption  = "option"
)

// Categories lists every category in a fixed order.
var Categories = []string{CategorySpot, CategoryLinear, CategoryInverse, CategoryOption}

// spotOrderFilters are the orderFilter values Bybit accepts on a spot cancel.
var spotOrderFilters = map[string]bool{"Order": true, "tpslOrder": true, "StopOrder": true}

// MaxSymbolLen bounds symbol; Bybit's longest (option) symbols are far shorter.
const MaxSymbolLen = 64

// MaxIDLen bounds orderId, orderLinkId and requestId. Bybit's orderLinkId is at
// most 36 characters; the bound here only keeps abusive input out of results.
const MaxIDLen = 128

// Cancel is the body of a message on the cancel subject. Field names are
// Bybit's where Bybit has the field.
type Cancel struct {
	Category    string `json:"category"`
	Symbol      string `json:"symbol"`
	OrderID     string `json:"orderId,omitempty"`
	OrderLinkID string `json:"orderLinkId,omitempty"`
	// OrderFilter is spot only: Order, tpslOrder or StopOrder.
	OrderFilter string `json:"orderFilter,omitempty"`
	// Account names the Bybit account (of the accounts file) that owns the
	// order; empty means the default account.
	Account string `json:"account,omitempty"`
	// RequestID is the caller's correlation id; it is echoed, not trusted to
	// be unique.
	RequestID string `json:"requestId,omitempty"`
	// ReplayOf and ReplayOfSeq are set by the replay tool on a resent
	// request: the original's requestId and stream sequence.
	ReplayOf    string `json:"replayOf,omitempty"`
	ReplayOfSeq uint64 `json:"replayOfSeq,omitempty"`
}

// DecodeCancel strictly decodes and validates a cancel request. Every error
// wraps ErrInvalid and says what is wrong in words a publisher can act on.
func DecodeCancel(data []byte) (Cancel, error) {
	var c Cancel
	err := decodeObject(data, map[string]any{
		"category":    &c.Category,
		"symbol":      &c.Symbol,
		"orderId":     &c.OrderID,
		"orderLinkId": &c.OrderLinkID,
		"orderFilter": &c.OrderFilter,
		"account":     &c.Account,
		"requestId":   &c.RequestID,
		"replayOf":    &c.ReplayOf,
		"replayOfSeq": &c.ReplayOfSeq,
	})
	if err != nil {
		return Cancel{}, err
	}
	if err := c.Validate(); err != nil {
		return Cancel{}, err
	}
	return c, nil
}

// Validate checks the rules Bybit applies to a cancel, so that a request that
// cannot succeed is answered "invalid" without spending rate-limit budget.
func (c Cancel) Validate() error {
	if err := validateCategory(c.Category); err != nil {
		return err
	}
	if err := validateSymbol(c.Symbol); err != nil {
		return err
	}
	if c.OrderID == "" && c.OrderLinkID == "" {
		return invalidf("one of orderId or orderLinkId is required")
	}
	if err := validateIDs(idField{"orderId", c.OrderID}, idField{"orderLinkId", c.OrderLinkID}, idField{"requestId", c.RequestID},
		idField{"replayOf", c.ReplayOf}, idField{"account", c.Account}); err != nil {
		return err
	}
	if c.OrderFilter != "" {
		if c.Category != CategorySpot {
			return invalidf("orderFilter is valid for category spot only, not %q", c.Category)
		}
		if !spotOrderFilters[c.OrderFilter] {
			return invalidf("orderFilter %q is not one of Order, tpslOrder, StopOrder", truncate(c.OrderFilter, 32))
		}
	}
	return nil
}

func validateCategory(category string) error {
	switch category {
	case CategorySpot, CategoryLinear, CategoryInverse, CategoryOption:
		return nil
	case "":
		return invalidf("category is required")
	default:
		return invalidf("category %q is not one of spot, linear, inverse, option", truncate(category, 32))
	}
}

func validateSymbol(symbol string) error {
	if symbol == "" {
		return invalidf("symbol is required")
	}
	if len(symbol) > MaxSymbolLen {
		return invalidf("symbol is longer than %d bytes", MaxSymbolLen)
	}
	for _, r := range symbol {
		if unicode.IsLower(r) {
			return invalidf("symbol %q has lower-case letters; Bybit symbols are upper case", symbol)
		}
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return invalidf("symbol %s has white space or control characters", strconv.Quote(symbol))
		}
	}
	return nil
}

func validateID(name, v string) error {
	if len(v) > MaxIDLen {
		return invalidf("%s is longer than %d bytes", name, MaxIDLen)
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return invalidf("%s has control characters", name)
		}
	}
	return nil
}

// OrderKey names the order a cancel targets within its category: two held
// cancels with the same key ask for the same thing.
func (c Cancel) OrderKey() string {
	if c.OrderID != "" {
		return c.Category + "/id/" + c.OrderID
	}
	return c.Category + "/link/" + c.OrderLinkID
}
