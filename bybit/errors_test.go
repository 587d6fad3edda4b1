package bybit

import (
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// answerWith is Bybit's answer with retCode code.
func answerWith(code int) string {
	return `{"retCode":` + strconv.Itoa(code) + `,"retMsg":"m","result":{},"retExtInfo":{},"time":1}`
}

// classCase is an answer of Bybit (HTTP status and body) with the class, a
// Class or its name, and the may-have-applied the client must give it.
type classCase[C Class | string] struct {
	name       string
	status     int
	body       string
	class      C
	mayApplied bool
}

func TestDecodeResponseClassifiesEveryAnswer(t *testing.T) {
	t.Parallel()
	cases := []classCase[Class]{
		{"not open 110001", 200, answerWith(110001), ClassNotOpen, false},
		{"not open 110008", 200, answerWith(110008), ClassNotOpen, false},
		{"not open 110010", 200, answerWith(110010), ClassNotOpen, false},
		{"spot not open 170213", 200, answerWith(170213), ClassNotOpen, false},
		{"spot cancelled 170142", 200, answerWith(170142), ClassNotOpen, false},
		{"spot not on book 170143", 200, answerWith(170143), ClassNotOpen, false},
		{"rate limited 10006", 200, answerWith(10006), ClassRateLimited, false},
		{"spot rate limited 170222", 200, answerWith(170222), ClassRateLimited, false},
		{"clock 10002", 200, answerWith(10002), ClassClockSkew, false},
		{"server timeout 10000", 200, answerWith(10000), ClassTransient, true},
		{"restarting 10016", 200, answerWith(10016), ClassTransient, true},
		{"processing 110079", 200, answerWith(110079), ClassTransient, true},
		{"spot processing 170212", 200, answerWith(170212), ClassTransient, true},
		{"option too fast 30035", 200, answerWith(30035), ClassTransient, true},
		{"param error 10001", 200, answerWith(10001), ClassPermanent, false},
		{"bad key 10003", 200, answerWith(10003), ClassPermanent, false},
		{"sign 10004", 200, answerWith(10004), ClassPermanent, false},
		{"spot not cancellable 170145", 200, answerWith(170145), ClassPermanent, false},
		{"unknown code", 200, answerWith(99999), ClassPermanent, false},
		{"502 html", 502, "<html>Bad Gateway</html>", ClassTransient, true},
		{"503 empty", 503, "", ClassTransient, true},
		{"200 html", 200, "<html>maintenance</html>", ClassTransient, true},
		{"200 cut short", 200, `{"retCode":0,"ret`, ClassTransient, true},
		{"429", 429, "system level frequency protection, please retry", ClassRateLimited, false},
		{"403 ban", 403, "<html>403 Forbidden: access too frequent</html>", ClassIPBan, false},
		{"403 other (CDN): paused like a ban", 403, "<html>The Amazon CloudFront distribution is configured to block access from your country.</html>", ClassIPBan, false},
		{"404", 404, "not found", ClassPermanent, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := decodeResponse(tc.status, http.Header{}, []byte(tc.body))
			require.Error(t, err)
			require.Equal(t, tc.class, ClassOf(err), err.Error())
			require.Equal(t, tc.mayApplied, MayHaveApplied(err))
		})
	}
}

func TestDecodeResponseSuccessAndRateLimitHeaders(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	h.Set(HeaderLimit, "10")
	h.Set(HeaderLimitStatus, "9")
	h.Set(HeaderLimitReset, "1672217377164")
	resp, err := decodeResponse(200, h, []byte(`{"retCode":0,"retMsg":"OK","result":{"orderId":"a"},"retExtInfo":{},"time":1672217377164}`))
	require.NoError(t, err)
	require.Equal(t, RateLimit{Known: true, Limit: 10, Remaining: 9, Reset: time.UnixMilli(1672217377164)}, resp.RateLimit)
	require.Equal(t, int64(1672217377164), resp.Time)

	h.Set(HeaderLimitStatus, "0")
	h.Del(HeaderLimitReset) // Bybit can omit it on a 10006
	_, err = decodeResponse(200, h, []byte(`{"retCode":10006,"retMsg":"Too many visits!","result":{},"time":1}`))
	rl, ok := RateLimitOf(err)
	require.True(t, ok)
	require.True(t, rl.Reset.IsZero())
	var apiErr *APIError
	require.True(t, errors.As(err, &apiErr))
	require.Equal(t, 10006, apiErr.RetCode)
}

func TestParseRateLimitIgnoresGarbage(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	h.Set(HeaderLimitStatus, "lots")
	h.Set(HeaderLimitReset, "-5")
	require.Equal(t, RateLimit{}, ParseRateLimit(h))
}

func FuzzDecodeResponse(f *testing.F) {
	f.Add(200, []byte(`{"retCode":0,"retMsg":"OK","result":{"orderId":"1","orderLinkId":"2"},"retExtInfo":{},"time":1}`))
	f.Add(200, []byte(`{"retCode":10006,"retMsg":"Too many visits!"}`))
	f.Add(502, []byte(`<html>bad gateway</html>`))
	f.Add(403, []byte(`access too frequent`))
	f.Add(200, []byte(`{"retCode":null}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		resp, err := decodeResponse(status, http.Header{}, body)
		if err == nil {
			require.NotNil(t, resp)
			require.Equal(t, 200, status)
			return
		}
		require.Nil(t, resp)
		// Every failure is one of the typed errors, so that the worker can
		// classify it.
		var apiErr *APIError
		var httpErr *HTTPError
		require.True(t, errors.As(err, &apiErr) || errors.As(err, &httpErr), "%T", err)
		_ = ClassOf(err)
	})
}

// Bybit's own codes for a cancel, as its v5 error-code table (docs/v5/error.mdx)
// words them; classes are compared by name so that the table reads as the
// README's does.
func TestBybitsCancelCodesAreClassified(t *testing.T) {
	t.Parallel()
	cases := []classCase[string]{
		{"429 in the body: high server load, please retry", 200, answerWith(429), "transient", true},
		{"spot 170139 order has been filled", 200, answerWith(170139), "not_open", false},
		{"spot 170190 cancel order has been finished", 200, answerWith(170190), "not_open", false},
		{"spot 170191 can not cancel, try again later", 200, answerWith(170191), "transient", false},
		{"spot 170032 network error", 200, answerWith(170032), "transient", true},
		{"spot 170144 order has been locked", 200, answerWith(170144), "transient", true},
		{"10018 over the IP rate limit", 200, answerWith(10018), "ip_rate_limited", false},
		{"403 from the CDN without an envelope", 403, "<html>The Amazon CloudFront distribution is configured to block access from your country.</html>", "ip_ban", false},
		{"403 empty", 403, "", "ip_ban", false},
		{"403 with a JSON retCode is that code's", 403, answerWith(10005), "permanent", false},
		{"403 with a JSON 10006", 403, answerWith(10006), "rate_limited", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := decodeResponse(tc.status, http.Header{}, []byte(tc.body))
			require.Error(t, err)
			require.Equal(t, tc.class, ClassOf(err).String(), err.Error())
			require.Equal(t, tc.mayApplied, MayHaveApplied(err))
		})
	}
}

// An endpoint (or category) not offered here: demo trading's 10032, route
// not found, unified-only, or a bare 404 (a classic account's cancel-batch).
// Permanent for the request, and nothing was applied.
func TestUnavailableSaysTheEndpointIsNotOffered(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		status      int
		body        string
		unavailable bool
	}{
		"10017 route not found":      {200, answerWith(10017), true},
		"10028 unified only":         {200, answerWith(10028), true},
		"10032 not in demo trading":  {200, answerWith(10032), true},
		"404 without an envelope":    {404, "", true},
		"404 with a retCode":         {404, answerWith(10001), false},
		"10001 parameter error":      {200, answerWith(10001), false},
		"110001 not open":            {200, answerWith(110001), false},
		"502 without an envelope":    {502, "<html>bad gateway</html>", false},
		"403 ban without a envelope": {403, "access too frequent", false},
	} {
		_, err := decodeResponse(tc.status, http.Header{}, []byte(tc.body))
		require.Error(t, err, name)
		require.Equal(t, tc.unavailable, Unavailable(err), name)
		if tc.unavailable {
			require.Equal(t, ClassPermanent, ClassOf(err), name)
			require.False(t, MayHaveApplied(err), name)
		}
	}
	require.False(t, Unavailable(nil))
	require.False(t, Unavailable(errors.New("other")))
}
