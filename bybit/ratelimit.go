package bybit

import (
	"net/http"
	"strconv"
	"time"
)

// RateLimit is the UID rate-limit state Bybit reports on every response of a
// limited endpoint.
type RateLimit struct {
	// Known is false when the response carried no X-Bapi-Limit-Status.
	Known bool
	// Limit is the endpoint's limit per window (X-Bapi-Limit); 0 if absent.
	Limit int
	// Remaining is what is left in the current window (X-Bapi-Limit-Status).
	Remaining int
	// Reset is X-Bapi-Limit-Reset-Timestamp: when the window resets if it is
	// exhausted, otherwise about now. Zero if absent (it can be missing on a
	// 10006).
	Reset time.Time
}

// Header names of the UID rate limit.
const (
	HeaderLimit       = "X-Bapi-Limit"
	HeaderLimitStatus = "X-Bapi-Limit-Status"
	HeaderLimitReset  = "X-Bapi-Limit-Reset-Timestamp"
)

// ParseRateLimit reads the X-Bapi-Limit* headers. Malformed values count as
// absent: a broken header must not stop a cancel.
func ParseRateLimit(h http.Header) RateLimit {
	var rl RateLimit
	if v, err := strconv.Atoi(h.Get(HeaderLimitStatus)); err == nil && v >= 0 {
		rl.Known = true
		rl.Remaining = v
	}
	if v, err := strconv.Atoi(h.Get(HeaderLimit)); err == nil && v > 0 {
		rl.Limit = v
	}
	if v, err := strconv.ParseInt(h.Get(HeaderLimitReset), 10, 64); err == nil && v > 0 {
		rl.Reset = time.UnixMilli(v)
	}
	return rl
}
