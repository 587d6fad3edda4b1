package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// The README documents cancel-all budgets per category; both places an
// operator sets limits accept them, over Bybit's documented defaults.
func TestCancelAllLimitsAreConfigurable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	accounts := writeFileIn(t, dir, "accounts.yaml", `
accounts:
  hedge:
    apiKey: hedge-key
    apiSecret: hedge-secret
    limits: {cancel-all/linear: 4}
`)
	env := envFunc(map[string]string{"BYBIT_API_KEY": "k", "BYBIT_API_SECRET": testSecret,
		"BYBIT_LIMITS": "cancel-all/option=2,cancel-all/spot=0", "BYBIT_ACCOUNTS_FILE": accounts})
	v, err := parseSettings("run", settings, []string{}, env, io.Discard, nil)
	require.NoError(t, err)
	rc, err := buildRunConfig(v, env)
	require.NoError(t, err)
	require.Equal(t, 2, rc.worker.Limits["cancel-all/option"])
	require.Equal(t, 0, rc.worker.Limits["cancel-all/spot"], "0 is unlimited")
	require.Equal(t, 10, rc.worker.Limits["cancel-all/linear"], "Bybit's documented default")
	require.Equal(t, 10, rc.worker.Limits["cancel-all/inverse"])
	require.Equal(t, 4, rc.accounts["hedge"].limits["cancel-all/linear"])
}
