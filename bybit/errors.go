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
	// ClassIPBan: HTTP 403 "access too frequent"; every request of the
	// process must stop for at least ten minutes.
	ClassIPBan
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
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// retCode classes for a cancel (see bybit-v5-notes.md).
var retCodeClass = map[int]Class{
	10000:  ClassTransient, // server timeout
	10002:  ClassClockSkew,
	10006:  ClassRateLimited,
	10016:  ClassTransient, // server error / restarting
	110001: ClassNotOpen,
	110008: ClassNotOpen,
	110010: ClassNotOpen,
	110079: ClassTransient, // order is being processed
	170213: ClassNotOpen,
	170142: ClassNotOpen,
	170143: ClassNotOpen,
	170212: ClassTransient, // spot: cancel already processing
	170147: ClassTransient,
	170150: ClassTransient,
	170001: ClassTransient,
	170007: ClassTransient,
	170222: ClassRateLimited,
	30035:  ClassTransient, // option: too fast to cancel
}

// retCodes whose answer proves the request reached the matching engine, or may
// have: a retry after them can find the order already gone.
var retCodeMayApply = map[int]bool{
	10000: true, 10016: true, 110079: true, 170212: true,
	170147: true, 170150: true, 170001: true, 170007: true, 30035: true,
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
	if c, ok := retCodeClass[e.RetCode]; ok {
		return c
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
	ipBan     bool
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
	case e.ipBan:
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
		return retCodeMayApply[apiErr.RetCode]
	case errors.As(err, &httpErr):
		return httpErr.Class() == ClassTransient
	case errors.As(err, &trErr):
		return trErr.Written
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
