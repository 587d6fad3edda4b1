package worker_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// A key without expiry (Bybit: expiredAt "1970-01-01T00:00:00Z") starts
// without a warning; one that expires within a week warns.
func TestPreflightWarnsOnlyForAKeyThatExpiresSoon(t *testing.T) {
	t.Parallel()
	ex := bybittest.New(bybittest.Options{Accounts: []bybittest.Account{
		{APIKey: "never", Secret: "s1"},
		{APIKey: "soon", Secret: "s2", ExpiresAt: time.Now().Add(72 * time.Hour)},
	}})
	srv := httptest.NewServer(ex)
	t.Cleanup(srv.Close)
	for key, warns := range map[string]bool{"never": false, "soon": true} {
		secret := map[string]string{"never": "s1", "soon": "s2"}[key]
		c, err := bybit.NewClient(bybit.Options{BaseURL: srv.URL, APIKey: key, APISecret: bybit.Secret(secret)})
		require.NoError(t, err)
		logs := &embedded.LogBuffer{}
		require.NoError(t, worker.Preflight(context.Background(), c, slog.New(slog.NewTextHandler(logs, nil))))
		require.Equal(t, warns, strings.Contains(logs.String(), "expires within a week"), "%s:\n%s", key, logs.String())
	}
}
