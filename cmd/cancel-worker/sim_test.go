package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
)

// `cancel-worker sim` can rest open orders (so cancel-all can be tried) and
// accept a read-only and an RSA key (so the key checks can).
func TestSimRestsOrdersAndAcceptsReadOnlyAndRSAKeys(t *testing.T) {
	t.Parallel()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	require.NoError(t, err)
	pubFile := writeFileIn(t, t.TempDir(), "rsa.pub", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))

	ctx, cancel := context.WithCancel(context.Background())
	stderr := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runSim(ctx, []string{"--addr", "127.0.0.1:0", "--order", "spot:BTCUSDT:2", "--order", "spot:BTCUSDT:1:tpslOrder",
			"--order", "linear:BTCUSDT", "--read-only-key", "ro-key:ro-secret", "--rsa-key", "rsa-key:" + pubFile}, stderr)
	}()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	urlRE := regexp.MustCompile(`simulated Bybit at (http://[0-9.:]+)`)
	var url string
	require.Eventually(t, func() bool {
		m := urlRE.FindStringSubmatch(stderr.String())
		if m != nil {
			url = m[1]
		}
		return m != nil
	}, 10*time.Second, 5*time.Millisecond)
	require.Regexp(t, `resting spot BTCUSDT tpslOrder orderId=`, stderr.String())

	client := func(o bybit.Options) *bybit.Client {
		o.BaseURL = url
		c, err := bybit.NewClient(o)
		require.NoError(t, err)
		return c
	}
	demo := client(bybit.Options{APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret})
	res, err := demo.CancelAll(ctx, bybit.CancelAllRequest{Category: "spot"})
	require.NoError(t, err)
	require.Len(t, res.Orders, 2, "the two normal spot orders; the TP/SL one needs its orderFilter")
	res, err = demo.CancelAll(ctx, bybit.CancelAllRequest{Category: "spot", OrderFilter: "tpslOrder"})
	require.NoError(t, err)
	require.Len(t, res.Orders, 1)

	info, err := client(bybit.Options{APIKey: "ro-key", APISecret: "ro-secret"}).QueryAPIKey(ctx)
	require.NoError(t, err)
	require.True(t, info.ReadOnly)
	_, err = client(bybit.Options{APIKey: "ro-key", APISecret: "ro-secret"}).CancelAll(ctx, bybit.CancelAllRequest{Category: "linear", Symbol: "BTCUSDT"})
	var apiErr *bybit.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 10005, apiErr.RetCode)

	rsaClient := client(bybit.Options{APIKey: "rsa-key", RSAPrivateKey: priv})
	info, err = rsaClient.QueryAPIKey(ctx)
	require.NoError(t, err)
	ok, _ := info.CanTrade()
	require.True(t, ok)
	res, err = rsaClient.CancelAll(ctx, bybit.CancelAllRequest{Category: "linear", Symbol: "BTCUSDT"})
	require.NoError(t, err)
	require.Len(t, res.Orders, 1, "an RSA-signed cancel-all of the resting linear order")
}

func TestSimFlagErrors(t *testing.T) {
	t.Parallel()
	for want, args := range map[string][]string{
		`--order "spot": want CATEGORY:SYMBOL`:   {"--order", "spot"},
		"category \"futures\" is not one of":     {"--order", "futures:BTCUSDT"},
		"count \"many\" is not":                  {"--order", "spot:BTCUSDT:many"},
		"--read-only-key \"k\": want KEY:SECRET": {"--read-only-key", "k"},
		"--rsa-key k: cannot read /nonexistent":  {"--rsa-key", "k:/nonexistent"},
	} {
		err := runSim(context.Background(), append([]string{"--addr", "127.0.0.1:0"}, args...), &syncBuffer{})
		require.ErrorContains(t, err, want)
	}
}
