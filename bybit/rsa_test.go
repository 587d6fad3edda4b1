package bybit_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

func TestRSAKeysSignAsBybitDocuments(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	for name, block := range map[string]*pem.Block{
		"PKCS#1": {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)},
		"PKCS#8": {Type: "PRIVATE KEY", Bytes: pkcs8},
	} {
		parsed, err := bybit.ParseRSAPrivateKey(pem.EncodeToMemory(block))
		require.NoError(t, err, name)

		// Capture what the client sends and verify it with the public key.
		var sig, ts, recv string
		var body []byte
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sig, ts, recv = r.Header.Get("X-BAPI-SIGN"), r.Header.Get("X-BAPI-TIMESTAMP"), r.Header.Get("X-BAPI-RECV-WINDOW")
			body = make([]byte, r.ContentLength)
			_, _ = r.Body.Read(body)
			_, _ = w.Write([]byte(`{"retCode":0,"retMsg":"OK","result":{"orderId":"1","orderLinkId":""},"time":1}`))
		}))
		client, err := bybit.NewClient(bybit.Options{BaseURL: srv.URL, APIKey: "rsa-key", RSAPrivateKey: parsed})
		require.NoError(t, err)
		_, err = client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "linear", Symbol: "BTCUSDT", OrderID: "1"})
		srv.Close()
		require.NoError(t, err, name)
		raw, err := base64.StdEncoding.DecodeString(sig)
		require.NoError(t, err, "the signature is base64")
		sum := sha256.Sum256([]byte(ts + "rsa-key" + recv + string(body)))
		require.NoError(t, rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, sum[:], raw), name)
		_, err = strconv.ParseInt(ts, 10, 64)
		require.NoError(t, err)
	}
}

func TestRSAKeyAtTheSimulatedExchange(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ex := bybittest.New(bybittest.Options{Accounts: []bybittest.Account{{APIKey: "rsa-key", RSAPublicKey: &key.PublicKey}}})
	srv := httptest.NewServer(ex)
	defer srv.Close()
	o := ex.AddOrder(bybittest.Order{Category: "option", Symbol: "BTC-27DEC24-100000-C"})
	client, err := bybit.NewClient(bybit.Options{BaseURL: srv.URL, APIKey: "rsa-key", RSAPrivateKey: key, Timeout: 5 * time.Second})
	require.NoError(t, err)
	_, err = client.QueryAPIKey(context.Background())
	require.NoError(t, err, "GET signed over the query string")
	_, err = client.CancelOrder(context.Background(), bybit.CancelOrderRequest{Category: "option", Symbol: o.Symbol, OrderID: o.OrderID})
	require.NoError(t, err)

	other, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	wrong, err := bybit.NewClient(bybit.Options{BaseURL: srv.URL, APIKey: "rsa-key", RSAPrivateKey: other})
	require.NoError(t, err)
	_, err = wrong.QueryAPIKey(context.Background())
	require.ErrorContains(t, err, "10004")
}

func TestParseRSAPrivateKeyRejectsWhatBybitCannotUse(t *testing.T) {
	t.Parallel()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ecDER, err := x509.MarshalPKCS8PrivateKey(ec)
	require.NoError(t, err)
	for name, in := range map[string][]byte{
		"not PEM":   []byte("hello"),
		"small key": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(small)}),
		"EC key":    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}),
		"garbage":   pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte("garbage-key-material")}),
		"cert":      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("x")}),
	} {
		_, err := bybit.ParseRSAPrivateKey(in)
		require.Error(t, err, name)
		require.NotContains(t, err.Error(), "garbage-key-material", name)
	}
	_, err = bybit.NewClient(bybit.Options{BaseURL: "http://x", APIKey: "k", APISecret: "s", RSAPrivateKey: small})
	require.Error(t, err, "exactly one of secret or RSA key")
}
