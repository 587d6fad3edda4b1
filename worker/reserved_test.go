package worker_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// An account under a reserved name is refused, and still checked for its
// window and its client: the operator learns every problem at once.
func TestAReservedAccountIsStillChecked(t *testing.T) {
	cfg := worker.DefaultConfig()
	cfg.Accounts = map[string]worker.Account{"": {DCPWindow: 2 * time.Second}}
	err := cfg.Validate()
	require.ErrorContains(t, err, "is reserved")
	require.ErrorContains(t, err, "has no client")
	require.ErrorContains(t, err, "whole seconds")
}
