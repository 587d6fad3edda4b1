package bybit

import (
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
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

// signer makes the X-BAPI-SIGN value of a payload. The same signer signs the
// private WebSocket's auth.
type signer interface {
	sign(payload []byte) string
}

// hmacSigner signs with an HMAC key issued by Bybit: lower-case hex of
// HMAC-SHA256(secret, payload).
type hmacSigner struct{ secret []byte }

// rsaSigner signs with a self-generated RSA key registered with Bybit: base64
// of RSA PKCS#1 v1.5 over SHA-256.
type rsaSigner struct{ key *rsa.PrivateKey }

func (s rsaSigner) sign(payload []byte) string {
	sum := sha256.Sum256(payload)
	sig, err := rsa.SignPKCS1v15(nil, s.key, crypto.SHA256, sum[:])
	if err != nil {
		// Only a key too small for a SHA-256 digest fails, and
		// ParseRSAPrivateKey refuses those.
		return ""
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// ParseRSAPrivateKey reads a PEM private key, PKCS#1 ("RSA PRIVATE KEY") or
// PKCS#8 ("PRIVATE KEY"). Errors never include the key.
func ParseRSAPrivateKey(pemBytes []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var key *rsa.PrivateKey
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, errors.New("PEM block RSA PRIVATE KEY is not a valid PKCS#1 key")
		}
		key = k
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, errors.New("PEM block PRIVATE KEY is not a valid PKCS#8 key")
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("PKCS#8 key is %T, not RSA", k)
		}
		key = rk
	default:
		return nil, fmt.Errorf("PEM block is %q; want RSA PRIVATE KEY or PRIVATE KEY", block.Type)
	}
	if key.N.BitLen() < 2048 {
		return nil, fmt.Errorf("RSA key has %d bits; Bybit needs at least 2048", key.N.BitLen())
	}
	return key, nil
}

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
