package messages

import "encoding/json"

// Headers of the sync service (orders.sync.cancel, orders.sync.cancel-all).
const (
	// HeaderWait asks what the reply waits for: "result" (the default) or
	// "confirmed" (the result and, when it is followed by any, its
	// confirmations).
	HeaderWait = "Cancel-Wait"
	// HeaderTimeout is how long the service may wait, as a Go duration
	// (e.g. 4s); capped by the worker's SYNC_MAX_TIMEOUT.
	HeaderTimeout = "Cancel-Timeout"
	// HeaderRequestSeq, on a reply, is the request's stream sequence (also on
	// a 504, so that the result can be found later).
	HeaderRequestSeq = "Cancel-Request-Seq"
	// HeaderStream, on a reply, is the stream that holds the request.
	HeaderStream = "Cancel-Stream"
	// HeaderDuplicate, on a reply, is "true" when the stream took the request
	// for a duplicate of an earlier one (same Nats-Msg-Id): the reply is the
	// earlier request's result.
	HeaderDuplicate = "Cancel-Duplicate"
)

// Values of HeaderWait.
const (
	WaitResult    = "result"
	WaitConfirmed = "confirmed"
)

// Answer is the body of a sync reply: the result, exactly as stored on the
// result subjects, plus the confirmations when they were asked for.
type Answer struct {
	Result
	Confirmations []Confirmation `json:"confirmations,omitempty"`
}

// DecodeAnswer decodes a sync reply (tolerantly, as DecodeResult).
func DecodeAnswer(data []byte) (Answer, error) {
	var a Answer
	err := json.Unmarshal(data, &a)
	return a, err
}
