package messages

import (
	"encoding/json"
	"strconv"
)

// CancelAll is the body of a message on the cancel-all subject: cancel every
// open order of a category, narrowed by symbol, baseCoin or settleCoin — or,
// with Scope "account" and no category, flatten the account: every open
// order of every kind in every category.
type CancelAll struct {
	// Scope ScopeAccount flattens the account; it takes no category,
	// symbol, baseCoin, settleCoin, orderFilter or stopOrderType.
	Scope      string `json:"scope,omitempty"`
	Category   string `json:"category,omitempty"`
	Symbol     string `json:"symbol,omitempty"`
	BaseCoin   string `json:"baseCoin,omitempty"`
	SettleCoin string `json:"settleCoin,omitempty"`
	// OrderFilter: linear/inverse Order, StopOrder or OpenOrder; spot
	// Order, tpslOrder, StopOrder, OcoOrder or BidirectionalTpslOrder (Bybit
	// cancels only Order, normal orders, without one); option Order or
	// StopOrder.
	OrderFilter string `json:"orderFilter,omitempty"`
	// StopOrderType is only for linear/inverse with OrderFilter StopOrder.
	StopOrderType string `json:"stopOrderType,omitempty"`
	Account       string `json:"account,omitempty"`
	RequestID     string `json:"requestId,omitempty"`
	ReplayOf      string `json:"replayOf,omitempty"`
	ReplayOfSeq   uint64 `json:"replayOfSeq,omitempty"`
}

// ScopeAccount is the scope of a flatten: the whole account.
const ScopeAccount = "account"

// Flatten reports whether the request flattens the whole account.
func (c CancelAll) Flatten() bool { return c.Scope == ScopeAccount }

var cancelAllFilters = map[string]map[string]bool{
	CategoryLinear:  {"Order": true, "StopOrder": true, "OpenOrder": true},
	CategoryInverse: {"Order": true, "StopOrder": true, "OpenOrder": true},
	CategorySpot:    {"Order": true, "tpslOrder": true, "StopOrder": true, "OcoOrder": true, "BidirectionalTpslOrder": true},
	CategoryOption:  {"Order": true, "StopOrder": true},
}

// DecodeCancelAll strictly decodes and validates a cancel-all request.
func DecodeCancelAll(data []byte) (CancelAll, error) {
	var c CancelAll
	err := decodeObject(data, map[string]any{
		"scope":         &c.Scope,
		"category":      &c.Category,
		"symbol":        &c.Symbol,
		"baseCoin":      &c.BaseCoin,
		"settleCoin":    &c.SettleCoin,
		"orderFilter":   &c.OrderFilter,
		"stopOrderType": &c.StopOrderType,
		"account":       &c.Account,
		"requestId":     &c.RequestID,
		"replayOf":      &c.ReplayOf,
		"replayOfSeq":   &c.ReplayOfSeq,
	})
	if err != nil {
		return CancelAll{}, err
	}
	if err := c.Validate(); err != nil {
		return CancelAll{}, err
	}
	return c, nil
}

// Validate applies Bybit's rules for cancel-all per category.
func (c CancelAll) Validate() error {
	switch c.Scope {
	case "":
	case ScopeAccount:
		return c.validateFlatten()
	default:
		return invalidf("scope %q is not %q", truncate(c.Scope, 32), ScopeAccount)
	}
	if err := validateCategory(c.Category); err != nil {
		return err
	}
	if c.Symbol != "" {
		if err := validateSymbol(c.Symbol); err != nil {
			return err
		}
	}
	if err := validateIDs(
		idField{"baseCoin", c.BaseCoin}, idField{"settleCoin", c.SettleCoin}, idField{"account", c.Account},
		idField{"requestId", c.RequestID}, idField{"replayOf", c.ReplayOf},
	); err != nil {
		return err
	}
	return c.validateScope()
}

// validateFlatten checks a flatten: no field that narrows a cancel-all.
func (c CancelAll) validateFlatten() error {
	if c.Category != "" || c.Symbol != "" || c.BaseCoin != "" || c.SettleCoin != "" || c.OrderFilter != "" || c.StopOrderType != "" {
		return invalidf("scope account flattens every category: it takes no category, symbol, baseCoin, settleCoin, orderFilter or stopOrderType")
	}
	return validateIDs(idField{"account", c.Account}, idField{"requestId", c.RequestID}, idField{"replayOf", c.ReplayOf})
}

// validateScope checks what a cancel-all of the category may select.
func (c CancelAll) validateScope() error {
	futures := c.Category == CategoryLinear || c.Category == CategoryInverse
	if futures && c.Symbol == "" && c.BaseCoin == "" && c.SettleCoin == "" {
		return invalidf("a %s cancel-all needs one of symbol, baseCoin or settleCoin", c.Category)
	}
	if c.OrderFilter != "" && !cancelAllFilters[c.Category][c.OrderFilter] {
		return invalidf("orderFilter %q is not valid for a %s cancel-all", truncate(c.OrderFilter, 32), c.Category)
	}
	if c.StopOrderType != "" {
		if !futures || c.OrderFilter != "StopOrder" {
			return invalidf("stopOrderType is valid only on linear or inverse with orderFilter StopOrder")
		}
		if c.StopOrderType != "Stop" {
			return invalidf("stopOrderType %q is not Stop", truncate(c.StopOrderType, 32))
		}
	}
	return nil
}

// idField is a named identifier field.
type idField struct{ name, v string }

func validateIDs(fields ...idField) error {
	for _, f := range fields {
		if err := validateID(f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

// OrderRef names one order a cancel-all cancelled. A flatten's orders
// also say where they were: their category and, when known, their symbol
// (else the settleCoin or baseCoin of the call that cancelled them).
type OrderRef struct {
	OrderID     string `json:"orderId"`
	OrderLinkID string `json:"orderLinkId"`
	Category    string `json:"category,omitempty"`
	Symbol      string `json:"symbol,omitempty"`
	BaseCoin    string `json:"baseCoin,omitempty"`
	SettleCoin  string `json:"settleCoin,omitempty"`
}

// CancelAllProgress is one record of a cancel-all at work, stored in the
// stream on <progress subject>.<requestSeq> before the request has its
// result: what one call cancelled, that a call failed in a way that may have
// cancelled orders whose list never arrived, or that a run of the request
// stopped without a result. A redelivery — to the same process or another —
// folds the records into its result, so that the result lists what every
// call of every delivery cancelled.
type CancelAllProgress struct {
	RequestSeq uint64 `json:"requestSeq"`
	// Run names one run of the request (one delivery taken by one process).
	Run string `json:"run"`
	// Delivery is JetStream's delivery count of the request during the run.
	Delivery uint64 `json:"delivery"`
	// Call numbers the run's calls from 1 (0 on a Released record).
	Call   int        `json:"call,omitempty"`
	Orders []OrderRef `json:"orders,omitempty"`
	// Lost: the call may have cancelled orders, but its answer was lost.
	Lost bool `json:"lost,omitempty"`
	// Released: the run gave the request back without a result, and every
	// call it made has its record.
	Released bool `json:"released,omitempty"`
}

// CancelAllProgressMsgID is the Nats-Msg-Id of a progress record: a record
// published twice (a lost PubAck) is stored once.
func CancelAllProgressMsgID(p CancelAllProgress) string {
	id := ProgressMsgIDPrefix + strconv.FormatUint(p.RequestSeq, 10) + ":" + p.Run + ":"
	if p.Released {
		return id + "released"
	}
	return id + strconv.Itoa(p.Call)
}

// DecodeCancelAllProgress decodes a progress record (tolerantly, as results).
func DecodeCancelAllProgress(data []byte) (CancelAllProgress, error) {
	var p CancelAllProgress
	err := json.Unmarshal(data, &p)
	return p, err
}
