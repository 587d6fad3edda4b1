package messages

import "strings"

// Prefixes of the Nats-Msg-Ids the worker gives its own messages. JetStream
// deduplicates by Nats-Msg-Id across every subject of a stream, so a request
// carrying one of these ids could take the place of a result, a progress
// record or a confirmation: requests must not use them.
const (
	ResultMsgIDPrefix    = "result:"
	ProgressMsgIDPrefix  = "progress:"
	ConfirmedMsgIDPrefix = "confirmed:"
)

// ReservedMsgIDPrefixes are the prefixes above, in one list.
var ReservedMsgIDPrefixes = []string{ResultMsgIDPrefix, ProgressMsgIDPrefix, ConfirmedMsgIDPrefix}

// ReservedMsgID reports whether id starts with one of the worker's own
// prefixes, and which.
func ReservedMsgID(id string) (prefix string, reserved bool) {
	for _, p := range ReservedMsgIDPrefixes {
		if strings.HasPrefix(id, p) {
			return p, true
		}
	}
	return "", false
}
