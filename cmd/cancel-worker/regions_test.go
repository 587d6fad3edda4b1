package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// runConfigOf builds the run configuration from an environment.
func runConfigOf(t *testing.T, env map[string]string) (runConfig, error) {
	t.Helper()
	full := map[string]string{"BYBIT_API_KEY": "k", "BYBIT_API_SECRET": testSecret}
	for k, v := range env {
		full[k] = v
	}
	v, err := parseSettings("run", settings, nil, envFunc(full), io.Discard, nil)
	require.NoError(t, err)
	return buildRunConfig(v, envFunc(full))
}

// Bybit's regional sites pair a REST host with a stream host of their own
// (docs/v5/guide.mdx, docs/v5/ws/connect): a preset gives both; a host whose
// stream cannot be known is an error that says which setting to give, never
// a guessed wss://<api host>/v5/private.
func TestRegionalHostsGetTheirDocumentedStream(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		env           map[string]string
		rest, ws, err string
	}{
		"kz preset":          {env: map[string]string{"BYBIT_ENV": "mainnet-kz"}, rest: "https://api.bybit.kz", ws: "wss://stream.bybit.kz/v5/private"},
		"tr preset":          {env: map[string]string{"BYBIT_ENV": "mainnet-tr"}, rest: "https://api.bybit.tr", ws: "wss://stream.bybit.tr/v5/private"},
		"georgia preset":     {env: map[string]string{"BYBIT_ENV": "mainnet-ge"}, rest: "https://api.bybitgeorgia.ge", ws: "wss://stream.bybitgeorgia.ge/v5/private"},
		"kz base url":        {env: map[string]string{"BYBIT_BASE_URL": "https://api.bybit.kz"}, rest: "https://api.bybit.kz", ws: "wss://stream.bybit.kz/v5/private"},
		"mainnet base url":   {env: map[string]string{"BYBIT_BASE_URL": "https://api.bybit.com/"}, rest: "https://api.bybit.com/", ws: "wss://stream.bybit.com/v5/private"},
		"simulator":          {env: map[string]string{"BYBIT_BASE_URL": "http://127.0.0.1:8080"}, rest: "http://127.0.0.1:8080", ws: "ws://127.0.0.1:8080/v5/private"},
		"nl has no stream":   {env: map[string]string{"BYBIT_ENV": "mainnet-nl"}, err: "BYBIT_WS_URL: must be set: Bybit documents no private WebSocket for https://api.bybit.nl"},
		"nl, stream given":   {env: map[string]string{"BYBIT_ENV": "mainnet-nl", "BYBIT_WS_URL": "wss://example.test/v5/private"}, rest: "https://api.bybit.nl", ws: "wss://example.test/v5/private"},
		"nl, confirm off":    {env: map[string]string{"BYBIT_ENV": "mainnet-nl", "CONFIRM": "false"}, rest: "https://api.bybit.nl", ws: ""},
		"unknown https host": {env: map[string]string{"BYBIT_BASE_URL": "https://api.bybit.ae"}, err: "set BYBIT_WS_URL to the private stream of your account's site"},
		"proxy":              {env: map[string]string{"BYBIT_BASE_URL": "https://bybit-proxy.internal"}, err: "the private WebSocket of https://bybit-proxy.internal cannot be guessed"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rc, err := runConfigOf(t, tc.env)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.rest, rc.baseURL)
			require.Equal(t, tc.ws, rc.worker.WSURL)
		})
	}
}

func TestAccountsFileBaseURLWithoutKnownStreamNeedsWSURL(t *testing.T) {
	t.Parallel()
	file := writeFileIn(t, t.TempDir(), "accounts.yaml", "accounts:\n  nl:\n    apiKey: k\n    apiSecret: s\n    baseUrl: https://api.bybit.nl\n  kz:\n    apiKey: k2\n    apiSecret: s2\n    baseUrl: https://api.bybit.kz\n")
	_, err := readAccountsFile(file, "https://api-testnet.bybit.com", "wss://stream-testnet.bybit.com/v5/private", true)
	require.ErrorContains(t, err, "set wsUrl to the private stream of your account's site")
	accts, err := readAccountsFile(file, "https://api-testnet.bybit.com", "wss://stream-testnet.bybit.com/v5/private", false)
	require.NoError(t, err)
	require.Equal(t, "wss://stream.bybit.kz/v5/private", accts["kz"].wsURL)
}
