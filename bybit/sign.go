package bybit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
)

// Secret holds a credential. It formats as [REDACTED] under every verb of fmt,
// in slog and in JSON, so that printing a struct that holds one can never leak
// it; only Reveal returns the value.
type Secret string

const redacted = "[REDACTED]"

func (Secret) String() string               { return redacted }
func (Secret) GoString() string             { return redacted }
func (Secret) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(redacted)) }
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (s Secret) Reveal() string             { return string(s) }
func (s Secret) IsZero() bool               { return s == "" }

// hmacSigner signs with an HMAC key issued by Bybit: lower-case hex of
// HMAC-SHA256(secret, payload).
type hmacSigner struct{ secret []byte }

func (s hmacSigner) sign(payload []byte) string {
	m := hmac.New(sha256.New, s.secret)
	m.Write(payload)
	return hex.EncodeToString(m.Sum(nil))
}

// signPayload builds Bybit's string to sign: timestamp + apiKey + recvWindow +
// (body for POST, query string for GET). The bytes signed must be the bytes sent.
func signPayload(timestampMs int64, apiKey string, recvWindowMs int64, bodyOrQuery []byte) []byte {
	b := make([]byte, 0, 13+len(apiKey)+6+len(bodyOrQuery))
	b = strconv.AppendInt(b, timestampMs, 10)
	b = append(b, apiKey...)
	b = strconv.AppendInt(b, recvWindowMs, 10)
	return append(b, bodyOrQuery...)
}

// Sign returns the X-BAPI-SIGN value of an HMAC key for the given request
// parts. It is exported for the known-answer test and for callers that sign
// requests they send themselves.
func Sign(secret Secret, timestampMs int64, apiKey string, recvWindowMs int64, bodyOrQuery []byte) string {
	return hmacSigner{secret: []byte(secret)}.sign(signPayload(timestampMs, apiKey, recvWindowMs, bodyOrQuery))
}
