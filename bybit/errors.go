package bybit

import (
	"errors"
	"fmt"
	"net/http"
)

// Class is what a caller should do about an error. The client decides the
// class; how long to wait is the caller's policy.
type Class int

const (
	// ClassPermanent: retrying cannot help (bad parameters, bad key, ...).
	ClassPermanent Class = iota
	// ClassNotOpen: the order is not open (cancelled, filled or unknown).
	ClassNotOpen
	// ClassRateLimited: over the UID limit (10006, spot 170222) or HTTP 429;
	// wait for RateLimit.Reset when known, then retry.
	ClassRateLimited
	// ClassClockSkew: 10002, the timestamp is outside the recv window; resync
	// the clock offset and retry at once.
	ClassClockSkew
	// ClassTransient: server or network trouble; back off and retry.
	ClassTransient
	// ClassIPBan: HTTP 403 without a Bybit envelope: "access too frequent"
	// (Bybit's IP ban), or its CDN refusing the request (a region block);
	// every request of the process must stop for at least ten minutes, then
	// one probe decides.
	ClassIPBan
	// ClassIPRateLimited: 10018, over the IP-level limit (not a UID budget):
	// every request of the process slows down, as for the IP limit.
	ClassIPRateLimited
)

func (c Class) String() string {
	switch c {
	case ClassPermanent:
		return "permanent"
	case ClassNotOpen:
		return "not_open"
	case ClassRateLimited:
		return "rate_limited"
	case ClassClockSkew:
		return "clock_skew"
	case ClassTransient:
		return "transient"
	case ClassIPBan:
		return "ip_ban"
	case ClassIPRateLimited:
		return "ip_rate_limited"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// RetCode is one retCode the client classifies: Bybit's message for it (as in
// Bybit's v5 error-code table, docs/v5/error.mdx), what to do about it, and
// whether an answer with it may come after the cancel was applied.
type RetCode struct {
	Code  int
	Msg   string
	Class Class
	// MayApply: the answer proves the request reached the matching engine,
	// or may have: a retry after it can find the order already gone.
	MayApply bool
	// Unavailable: the endpoint (or the category on it) is not offered to
	// this account or environment (see Unavailable).
	Unavailable bool
}

// RetCodes is the one table of the retCodes a cancel can be answered with
// that the client classifies; any other retCode is ClassPermanent. The
// README's retCode table is checked against it by a test.
var RetCodes = []RetCode{
	// UTA and general codes.
	{429, "The trading service is experiencing a high server load. Please retry if you encounter this issue.", ClassTransient, true, false},
	{10000, "Server Timeout", ClassTransient, true, false},
	{10001, "Request parameter error", ClassPermanent, false, false},
	{10002, "The request time exceeds the time window range.", ClassClockSkew, false, false},
	{10003, "API key is invalid. Check whether the key and domain are matched, there are 4 env: mainnet, testnet, mainnet-demo, testnet-demo", ClassPermanent, false, false},
	{10004, "Error sign, please check your signature generation algorithm.", ClassPermanent, false, false},
	{10005, "Permission denied, please check your API key permissions.", ClassPermanent, false, false},
	{10006, "Too many visits. Exceeded the API Rate Limit.", ClassRateLimited, false, false},
	{10010, "Unmatched IP, please check your API key's bound IP addresses.", ClassPermanent, false, false},
	{10016, "Server error.", ClassTransient, true, false},
	// The endpoint, or the category on it, is not offered here: retrying it
	// cannot help, another endpoint may (Unavailable).
	{10017, "Route not found.", ClassPermanent, false, true},
	// Struck out in Bybit's table, still mapped by ccxt: an IP-level limit.
	{10018, "Exceeded the IP Rate Limit.", ClassIPRateLimited, false, false},
	{10028, "The API can only be accessed by unified account users.", ClassPermanent, false, true},
	// Not in Bybit's table: what its demo-trading service answers for an
	// endpoint it does not offer (seen in ccxt/ccxt#23232).
	{10032, "Demo trading are not supported.", ClassPermanent, false, true},
	{30035, "Option: Too fast to cancel, Try it later", ClassTransient, true, false},
	// Derivatives.
	{110001, "Order does not exist", ClassNotOpen, false, false},
	{110008, "The order has been completed or cancelled.", ClassNotOpen, false, false},
	{110010, "The order has been cancelled", ClassNotOpen, false, false},
	{110079, "The order is processing and can not be operated, please try again later", ClassTransient, true, false},
	// Spot.
	{170001, "Internal error.", ClassTransient, true, false},
	{170007, "Timeout waiting for response from backend server.", ClassTransient, true, false},
	{170032, "Network error. Please try again later", ClassTransient, true, false},
	{170139, "Order has been filled.", ClassNotOpen, false, false},
	{170142, "Order has been cancelled", ClassNotOpen, false, false},
	{170143, "Cannot be found on order book", ClassNotOpen, false, false},
	{170144, "Order has been locked", ClassTransient, true, false},
	{170145, "This order type does not support cancellation", ClassPermanent, false, false},
	{170147, "Order cancellation timeout", ClassTransient, true, false},
	{170150, "Cancel order failed", ClassTransient, true, false},
	{170190, "Cancel order has been finished", ClassNotOpen, false, false},
	{170191, "Can not cancel order, please try again later", ClassTransient, false, false},
	{170212, "Cancel order request processing", ClassTransient, true, false},
	{170213, "Order does not exist.", ClassNotOpen, false, false},
	{170222, "Too many requests in this time frame.", ClassRateLimited, false, false},
}

var retCodes = func() map[int]RetCode {
	m := make(map[int]RetCode, len(RetCodes))
	for _, rc := range RetCodes {
		if _, dup := m[rc.Code]; dup {
			panic(fmt.Sprintf("bybit: retCode %d twice in RetCodes", rc.Code))
		}
		m[rc.Code] = rc
	}
	return m
}()

// LookupRetCode returns the table's entry of a retCode.
func LookupRetCode(code int) (RetCode, bool) {
	rc, ok := retCodes[code]
	return rc, ok
}

// APIError is a well-formed Bybit envelope with a non-zero retCode.
type APIError struct {
	HTTPStatus int
	RetCode    int
	RetMsg     string
	// Time is the envelope's time (ms), zero if absent.
	Time      int64
	RateLimit RateLimit
}

func (e *APIError) Error() string {
	return fmt.Sprintf("bybit retCode %d: %s", e.RetCode, e.RetMsg)
}

// Class reports what to do about the error.
func (e *APIError) Class() Class {
	if rc, ok := retCodes[e.RetCode]; ok {
		return rc.Class
	}
	return ClassPermanent
}

// HTTPError is an answer that is not a Bybit envelope: a gateway's HTML page,
// an HTTP error status, an IP ban, or an unreadable body.
type HTTPError struct {
	StatusCode int
	// Body is the start of the body, for logs and results.
	Body      string
	RateLimit RateLimit
}

func (e *HTTPError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("bybit HTTP %d with no envelope", e.StatusCode)
	}
	return fmt.Sprintf("bybit HTTP %d with no envelope: %q", e.StatusCode, e.Body)
}

// Class reports what to do about the error.
func (e *HTTPError) Class() Class {
	switch {
	case e.StatusCode == http.StatusForbidden:
		// Bybit documents its IP ban only as "403, access too frequent";
		// other 403s come from its CDN with bodies that vary. Sending on
		// into either prolongs it: pause like a ban. (A 403 with a JSON
		// retCode is an *APIError, classified by that code.)
		return ClassIPBan
	case e.StatusCode == http.StatusTooManyRequests:
		return ClassRateLimited
	case e.StatusCode >= 500, e.StatusCode < 300:
		// 5xx, or a 2xx/1xx whose body was not an envelope: the gateway or
		// the body is broken, not the request.
		return ClassTransient
	case e.StatusCode == http.StatusRequestTimeout:
		return ClassTransient
	default:
		return ClassPermanent
	}
}

// TransportError is a failure to get any answer: connection refused or
// reset, a timeout, a body cut short.
type TransportError struct {
	Err error
	// Written is true when the request was fully written before the failure:
	// Bybit may have applied it.
	Written bool
}

func (e *TransportError) Error() string {
	if e.Written {
		return "bybit request sent, no answer: " + e.Err.Error()
	}
	return "bybit request not sent: " + e.Err.Error()
}

func (e *TransportError) Unwrap() error { return e.Err }

// ClassOf returns the class of an error returned by the client. Errors the
// client did not make (a cancelled context among them) are permanent.
func ClassOf(err error) Class {
	var apiErr *APIError
	var httpErr *HTTPError
	var trErr *TransportError
	switch {
	case errors.As(err, &apiErr):
		return apiErr.Class()
	case errors.As(err, &httpErr):
		return httpErr.Class()
	case errors.As(err, &trErr):
		return ClassTransient
	}
	return ClassPermanent
}

// MayHaveApplied reports whether the failed request may nevertheless have been
// applied by Bybit: the answer was lost after the request was written, or a
// server-side failure came after it reached the exchange. It errs on the side
// of yes.
func MayHaveApplied(err error) bool {
	var apiErr *APIError
	var httpErr *HTTPError
	var trErr *TransportError
	switch {
	case errors.As(err, &apiErr):
		return retCodes[apiErr.RetCode].MayApply
	case errors.As(err, &httpErr):
		return httpErr.Class() == ClassTransient
	case errors.As(err, &trErr):
		return trErr.Written
	}
	return false
}

// Unavailable reports whether an error says that the endpoint, or the
// category on it, is not offered to this account or environment: a retCode
// of RetCodes marked so (10017 route not found, 10028 unified accounts only,
// 10032 not offered by demo trading), or HTTP 404 without an envelope
// (docs/v5/error.mdx: a wrong path, or a category that does not match the
// account mode; a classic account's cancel-batch). Nothing was applied;
// retrying the same endpoint cannot help, another endpoint may.
func Unavailable(err error) bool {
	var apiErr *APIError
	var httpErr *HTTPError
	switch {
	case errors.As(err, &apiErr):
		return retCodes[apiErr.RetCode].Unavailable
	case errors.As(err, &httpErr):
		return httpErr.StatusCode == http.StatusNotFound
	}
	return false
}

// RateLimitOf returns the rate-limit state carried by an error, if any.
func RateLimitOf(err error) (RateLimit, bool) {
	var apiErr *APIError
	var httpErr *HTTPError
	switch {
	case errors.As(err, &apiErr):
		return apiErr.RateLimit, apiErr.RateLimit.Known
	case errors.As(err, &httpErr):
		return httpErr.RateLimit, httpErr.RateLimit.Known
	}
	return RateLimit{}, false
}
