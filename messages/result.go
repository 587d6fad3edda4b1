package messages

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"
)

// Status is the final outcome of one cancel request.
type Status string

const (
	// StatusCancelled: Bybit answered retCode 0; the cancel was accepted.
	StatusCancelled Status = "cancelled"
	// StatusNotOpen: Bybit says the order is not open (already cancelled,
	// filled, or unknown). After an ambiguous attempt this is the expected
	// answer to a cancel that did work.
	StatusNotOpen Status = "not_open"
	// StatusRejected: any other permanent retCode.
	StatusRejected Status = "rejected"
	// StatusInvalid: the message was never sent; Error says why.
	StatusInvalid Status = "invalid"
	// StatusFailed: transient failures outlasted WORKER_MAX_AGE or the
	// consumer's last delivery; LastError says what the last one was.
	StatusFailed Status = "failed"
)

// MaxPayloadKept is how much of an invalid body a result carries.
const MaxPayloadKept = 4096

// Result is published once per request: on the ack subject when Status is
// cancelled, on the rejected subject otherwise. Results are not ordered;
// RequestSeq joins a result to its request.
type Result struct {
	RequestID  string `json:"requestId"`
	RequestSeq uint64 `json:"requestSeq"`
	Status     Status `json:"status"`

	Category    string `json:"category,omitempty"`
	Symbol      string `json:"symbol,omitempty"`
	OrderID     string `json:"orderId,omitempty"`
	OrderLinkID string `json:"orderLinkId,omitempty"`
	Account     string `json:"account,omitempty"`
	// BaseCoin and SettleCoin echo a cancel-all's scope.
	BaseCoin   string `json:"baseCoin,omitempty"`
	SettleCoin string `json:"settleCoin,omitempty"`
	// Orders lists what a cancel-all cancelled: every call of every
	// delivery (also when a later call of its repeat loop failed).
	Orders []OrderRef `json:"orders,omitempty"`
	// OrdersComplete is set on the result of a cancel-all that was sent:
	// false when Orders may miss orders it cancelled — a call's answer was
	// lost (a timeout, a 5xx), or an earlier delivery ran calls whose
	// progress is not known (a crash, or a stream that does not capture the
	// progress subject). It errs on the side of false.
	OrdersComplete *bool `json:"ordersComplete,omitempty"`

	// Scope "account" marks the result of a flatten (see CancelAll).
	Scope string `json:"scope,omitempty"`
	// Complete is set on a flatten's result: true only when its last
	// lookups found no open order in any category. Status is cancelled
	// then; failed (rounds spent, retries outlasted) or rejected (Bybit
	// refused a call: RetCode, RetMsg) otherwise, with Left and LastError.
	Complete *bool `json:"complete,omitempty"`
	// Cancelled counts a flatten's Orders per category.
	Cancelled map[string]int `json:"cancelled,omitempty"`
	// Left lists open orders a flatten's last lookups still found (at most
	// one page of each lookup); LeftMore says there were more.
	Left     []OrderRef `json:"left,omitempty"`
	LeftMore bool       `json:"leftMore,omitempty"`
	// Rounds counts a flatten's rounds of lookups and cancel-alls.
	Rounds int `json:"rounds,omitempty"`

	// RetCode and RetMsg are Bybit's answer, when there was one.
	RetCode *int   `json:"retCode,omitempty"`
	RetMsg  string `json:"retMsg,omitempty"`
	// ExchangeTime is Bybit's envelope time (ms) of the deciding answer.
	ExchangeTime int64 `json:"exchangeTime,omitempty"`

	// Attempts counts exchange requests made for this delivery.
	Attempts int `json:"attempts"`
	// SentAt is when the deciding request was sent.
	SentAt *time.Time `json:"sentAt,omitempty"`
	// RateLimitWaitMs is the time spent waiting for rate-limit budget.
	RateLimitWaitMs int64 `json:"rateLimitWaitMs"`
	// Ambiguous: the cancel may have reached Bybit earlier without its answer
	// being recorded (a timeout once the request was written, or a
	// redelivery). It means "may", and errs on the side of saying so.
	Ambiguous bool `json:"ambiguous"`
	// Deliveries is JetStream's delivery count of the request.
	Deliveries uint64 `json:"deliveries,omitempty"`
	// RequestTime is the request's stream timestamp.
	RequestTime time.Time `json:"requestTime"`

	// Error says why a request is invalid.
	Error string `json:"error,omitempty"`
	// LastError is the last transient failure of a failed request.
	LastError string `json:"lastError,omitempty"`
	// PayloadBase64 is an invalid body, truncated to MaxPayloadKept bytes;
	// PayloadSize and PayloadSHA256 describe the whole original.
	PayloadBase64 string `json:"payloadBase64,omitempty"`
	PayloadSize   int    `json:"payloadSize,omitempty"`
	PayloadSHA256 string `json:"payloadSha256,omitempty"`

	ReplayOf    string `json:"replayOf,omitempty"`
	ReplayOfSeq uint64 `json:"replayOfSeq,omitempty"`
}

// NewResult starts a result for a decoded request with the fields every
// outcome echoes.
func NewResult(c Cancel, requestID string, seq uint64, requestTime time.Time) Result {
	return Result{
		RequestID:   requestID,
		RequestSeq:  seq,
		Category:    c.Category,
		Symbol:      c.Symbol,
		OrderID:     c.OrderID,
		OrderLinkID: c.OrderLinkID,
		Account:     c.Account,
		RequestTime: requestTime,
		ReplayOf:    c.ReplayOf,
		ReplayOfSeq: c.ReplayOfSeq,
	}
}

// NewCancelAllResult starts the result of a cancel-all request.
func NewCancelAllResult(c CancelAll, requestID string, seq uint64, requestTime time.Time) Result {
	return Result{
		RequestID: requestID, RequestSeq: seq, Scope: c.Scope, Category: c.Category, Symbol: c.Symbol,
		BaseCoin: c.BaseCoin, SettleCoin: c.SettleCoin, Account: c.Account, RequestTime: requestTime,
		ReplayOf: c.ReplayOf, ReplayOfSeq: c.ReplayOfSeq,
	}
}

// NewInvalidResult answers a body that could not be decoded or validated.
// The original stays in the stream at seq; the result keeps enough of it to
// recognise it.
func NewInvalidResult(payload []byte, reason error, requestID string, seq uint64, requestTime time.Time) Result {
	kept := payload
	if len(kept) > MaxPayloadKept {
		kept = kept[:MaxPayloadKept]
	}
	sum := sha256.Sum256(payload)
	return Result{
		RequestID:     requestID,
		RequestSeq:    seq,
		Status:        StatusInvalid,
		RequestTime:   requestTime,
		Error:         reason.Error(),
		PayloadBase64: base64.StdEncoding.EncodeToString(kept),
		PayloadSize:   len(payload),
		PayloadSHA256: hex.EncodeToString(sum[:]),
	}
}

// Acknowledged reports whether the result belongs on the ack subject.
func (r Result) Acknowledged() bool { return r.Status == StatusCancelled }

// MsgID is the Nats-Msg-Id a result is published with. The request's stream
// sequence is unique per stream (unlike requestId), so a redelivered request
// can never add a second result inside the stream's duplicate window.
func (r Result) MsgID() string { return ResultMsgID(r.RequestSeq) }

// ResultMsgID is the Nats-Msg-Id of the result of the request at seq.
func ResultMsgID(seq uint64) string { return ResultMsgIDPrefix + strconv.FormatUint(seq, 10) }

// Marshal encodes the result for publishing.
func (r Result) Marshal() ([]byte, error) { return json.Marshal(r) }

// DecodeResult decodes a published result (tolerantly: readers of old streams
// must not break when a field is added).
func DecodeResult(data []byte) (Result, error) {
	var r Result
	err := json.Unmarshal(data, &r)
	return r, err
}

// RequestID applies the correlation-id rule: the body's requestId, else the
// Nats-Msg-Id header, else "<stream>:<stream sequence>".
func RequestID(bodyID, msgID, stream string, seq uint64) string {
	switch {
	case bodyID != "":
		return bodyID
	case msgID != "":
		return msgID
	default:
		return stream + ":" + strconv.FormatUint(seq, 10)
	}
}

// FallbackResultMsgID is the Nats-Msg-Id a result is stored under when
// another message holds ResultMsgID(seq) (a request published with it).
// Every replica computes the same from the request's stream timestamp,
// which no publisher knows before the request is stored.
func FallbackResultMsgID(seq uint64, stored time.Time) string {
	return ResultMsgID(seq) + ":" + strconv.FormatInt(stored.UnixNano(), 10)
}
