package bybittest

import (
	"net/http"
	"strconv"
)

// takeBudget applies the rolling-window limit of one (uid, endpoint,
// category). It returns the headers to send and whether the request may go on.
func (e *Exchange) takeBudget(uid, endpoint, category string) (http.Header, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	name := endpoint
	if category != "" {
		name += "/" + category
	}
	limit := e.limits[name]
	if n, ok := e.opts.UIDLimits[uid][name]; ok {
		limit = n
	}
	now := e.nowLocked()
	h := http.Header{}
	if limit <= 0 {
		return h, true
	}
	// Bybit's table gives linear and inverse one limit spanning both
	// columns: one window per UID for both.
	window := category
	if window == "inverse" {
		window = "linear"
	}
	key := uid + "/" + endpoint + "/" + window
	times := e.windows[key]
	cut := 0
	for cut < len(times) && !times[cut].After(now.Add(-e.opts.Window)) {
		cut++
	}
	times = times[cut:]
	if !e.opts.OmitLimitHeader {
		h.Set("X-Bapi-Limit", strconv.Itoa(limit))
	}
	if len(times) >= limit {
		e.windows[key] = times
		h.Set("X-Bapi-Limit-Status", "0")
		if !e.opts.OmitResetHeader {
			h.Set("X-Bapi-Limit-Reset-Timestamp", strconv.FormatInt(times[0].Add(e.opts.Window).UnixMilli(), 10))
		}
		return h, false
	}
	times = append(times, now)
	e.windows[key] = times
	h.Set("X-Bapi-Limit-Status", strconv.Itoa(limit-len(times)))
	h.Set("X-Bapi-Limit-Reset-Timestamp", strconv.FormatInt(now.UnixMilli(), 10))
	return h, true
}
