package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// The settings' defaults are the worker's own: `cancel-worker run` with no
// setting runs worker.DefaultConfig(), whatever either side changes.
func TestSettingsDefaultToTheWorkersDefaultConfig(t *testing.T) {
	t.Parallel()
	env := envFunc(map[string]string{"BYBIT_API_KEY": "k", "BYBIT_API_SECRET": testSecret})
	v, err := parseSettings("run", settings, []string{}, env, io.Discard, nil)
	require.NoError(t, err)
	rc, err := buildRunConfig(v, env)
	require.NoError(t, err)
	want := worker.DefaultConfig()
	got := rc.worker
	got.Logger, got.Registerer, got.Accounts, got.WSURL = want.Logger, want.Registerer, want.Accounts, want.WSURL
	require.Empty(t, got.LimitCeilings, "no ceilings unless BYBIT_LIMITS sets some")
	got.LimitCeilings = want.LimitCeilings
	require.Equal(t, want, got)
}
