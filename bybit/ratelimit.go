package bybit

import (
	"errors"
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
	// 10006). Bybit sends it in its own clock; what a Client returns is in
	// the local clock (converted through the measured offset), so that it
	// can be compared with time.Now. ParseRateLimit leaves it as sent.
	Reset time.Time
}

// Header names of the UID rate limit.
const (
	HeaderLimit       = "X-Bapi-Limit"
	HeaderLimitStatus = "X-Bapi-Limit-Status"
	HeaderLimitReset  = "X-Bapi-Limit-Reset-Timestamp"
)

// ParseRateLimit reads the X-Bapi-Limit* headers. Malformed values count as
// absent: a broken header must not stop a cancel. Reset is in Bybit's clock.
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

// toLocalClock converts the exchange timestamps of an answer that a caller
// compares with its own clock — the rate-limit reset, on a success or on an
// error — from Bybit's clock to the local one, through the measured offset
// (server minus local). It is the one place that does: everything the client
// returns is in the local clock, except the envelope's time, which results
// report as Bybit's.
func (c *Client) toLocalClock(res *response, err error) {
	var apiErr *APIError
	var httpErr *HTTPError
	switch {
	case res != nil:
		c.localReset(&res.RateLimit)
	case errors.As(err, &apiErr):
		c.localReset(&apiErr.RateLimit)
	case errors.As(err, &httpErr):
		c.localReset(&httpErr.RateLimit)
	}
}

func (c *Client) localReset(rl *RateLimit) {
	if !rl.Reset.IsZero() {
		rl.Reset = rl.Reset.Add(-time.Duration(c.offset.Load()) * time.Millisecond)
	}
}
