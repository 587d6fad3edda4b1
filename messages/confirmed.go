package messages

import (
	"encoding/json"
	"strconv"
	"time"
)

// How a confirmation learnt the order's state.
const (
	ConfirmedByWebSocket = "websocket"
	ConfirmedByREST      = "rest"
	// ConfirmedByUnknown: neither the private stream nor the lookups knew
	// the order (Bybit keeps only recent closed orders), or every lookup
	// failed; Error says which.
	ConfirmedByUnknown = "unknown"
)

// Confirmation is published on the confirmed subject once per order of an
// acknowledged cancel (a cancel-all's result lists several), and of a
// not_open result marked ambiguous: the state Bybit reports for the order
// after the cancel, not a claim of who caused it.
type Confirmation struct {
	RequestID   string `json:"requestId"`
	RequestSeq  uint64 `json:"requestSeq"`
	OrderID     string `json:"orderId,omitempty"`
	OrderLinkID string `json:"orderLinkId,omitempty"`
	Category    string `json:"category"`
	Symbol      string `json:"symbol,omitempty"`
	Account     string `json:"account,omitempty"`
	// ResultStatus is the status of the result this confirms (cancelled or
	// not_open).
	ResultStatus Status `json:"resultStatus"`

	// OrderStatus is Bybit's orderStatus as observed: Cancelled,
	// PartiallyFilledCanceled, Filled, Deactivated, Rejected, ... Empty
	// when ConfirmedBy is unknown.
	OrderStatus string `json:"orderStatus,omitempty"`
	// Final is false when the order was still open (New, PartiallyFilled,
	// Untriggered, ...) at the last look: the cancel had not landed yet.
	Final       bool   `json:"final"`
	CancelType  string `json:"cancelType,omitempty"`
	UpdatedTime int64  `json:"updatedTime,omitempty"`
	// Qty, CumExecQty, LeavesQty and AvgPrice are Bybit's: how much of the
	// order filled before the cancel landed (a Cancelled order with a
	// non-zero cumExecQty was partly filled), what was left open, and the
	// average fill price. Decimal strings as Bybit sends them; empty when
	// ConfirmedBy is unknown.
	Qty         string `json:"qty,omitempty"`
	CumExecQty  string `json:"cumExecQty,omitempty"`
	LeavesQty   string `json:"leavesQty,omitempty"`
	AvgPrice    string `json:"avgPrice,omitempty"`
	ConfirmedBy string `json:"confirmedBy"`

	// AckTime is when the result was stored; ConfirmedAt when this was
	// decided; AckToConfirmMs the time between them.
	AckTime        time.Time `json:"ackTime"`
	ConfirmedAt    time.Time `json:"confirmedAt"`
	AckToConfirmMs int64     `json:"ackToConfirmMs"`
	// Error says why the state is unknown or not final.
	Error string `json:"error,omitempty"`
}

// PartlyFilled reports whether the order filled in part before the cancel
// landed: an executed quantity, and not Filled.
func (c Confirmation) PartlyFilled() bool {
	q, err := strconv.ParseFloat(c.CumExecQty, 64)
	return err == nil && q > 0 && c.OrderStatus != "Filled"
}

// ConfirmedMsgID is the Nats-Msg-Id of the confirmation of one order of the
// request at seq, named as the result names it: a redelivered result adds no
// second confirmation inside the duplicate window. An order the result knows
// only by its orderLinkId is named by it (the confirmation itself also
// carries the orderId Bybit reported).
func ConfirmedMsgID(seq uint64, orderID, orderLinkID string) string {
	id := orderID
	if id == "" {
		id = "link:" + orderLinkID
	}
	return ConfirmedMsgIDPrefix + strconv.FormatUint(seq, 10) + ":" + id
}

// Marshal encodes the confirmation for publishing.
func (c Confirmation) Marshal() ([]byte, error) { return json.Marshal(c) }

// DecodeConfirmation decodes a published confirmation (tolerantly).
func DecodeConfirmation(data []byte) (Confirmation, error) {
	var c Confirmation
	err := json.Unmarshal(data, &c)
	return c, err
}

// NeedsConfirmation reports whether a result is followed by confirmations:
// Bybit accepted the cancel, or said the order is not open after an attempt
// that may have applied.
func (r Result) NeedsConfirmation() bool {
	return r.Status == StatusCancelled || (r.Status == StatusNotOpen && r.Ambiguous)
}

// ConfirmTargets lists the orders a result's confirmations are about: the
// cancelled order, or each order a cancel-all cancelled.
func (r Result) ConfirmTargets() []OrderRef {
	if r.Orders != nil || (r.OrderID == "" && r.OrderLinkID == "") {
		return r.Orders
	}
	return []OrderRef{{OrderID: r.OrderID, OrderLinkID: r.OrderLinkID}}
}
