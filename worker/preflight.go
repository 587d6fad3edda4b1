package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// Preflight measures the clock offset to Bybit and checks the API key with
// GET /v5/user/query-api. A key Bybit does not know (10003: often a key of
// another environment), a read-only key, or one without trade permission is
// an error that says which; network trouble is retried until ctx ends. Where
// the environment does not offer the key check (demo trading) it warns.
func Preflight(ctx context.Context, client *bybit.Client, log *slog.Logger) error {
	return preflight(ctx, client, log, time.Now)
}

// preflight is Preflight on the clock now (the worker's).
func preflight(ctx context.Context, client *bybit.Client, log *slog.Logger, now func() time.Time) error {
	retry := func(what string, op func() error) error {
		b := backoff.NewExponentialBackOff()
		b.MaxInterval = 10 * time.Second
		b.MaxElapsedTime = 0
		return backoff.RetryNotify(func() error {
			err := op()
			switch bybit.ClassOf(err) {
			case bybit.ClassPermanent:
				return backoff.Permanent(err)
			case bybit.ClassIPBan:
				// Retrying would prolong the ban.
				return backoff.Permanent(fmt.Errorf("Bybit refused this IP address with HTTP 403 (its IP ban, \"access too frequent\", or a region block by its CDN); wait at least 10 minutes before starting again, and check that this address may reach Bybit: %w", err))
			}
			return err
		}, backoff.WithContext(b, ctx), func(err error, d time.Duration) {
			log.Warn(what+" failed; retrying", "error", err, "in", d)
		})
	}
	if err := retry("clock sync with Bybit", func() error {
		off, err := client.SyncClock(ctx)
		if err == nil {
			log.Info("clock synced with Bybit", "offset", off, "baseURL", client.BaseURL())
		}
		return err
	}); err != nil {
		return fmt.Errorf("clock sync with %s: %w", client.BaseURL(), err)
	}
	var info bybit.APIKeyInfo
	err := retry("API key check", func() error {
		var err error
		info, err = client.QueryAPIKey(ctx)
		return err
	})
	if bybit.Unavailable(err) {
		// Bybit's demo trading has no GET /v5/user/query-api
		// (docs/v5/demo.mdx): nothing to check the key with here.
		log.Warn("this Bybit environment does not offer the API key check (GET /v5/user/query-api; demo trading has none): the key's permissions are not checked at start, each cancel's answer decides",
			"apiKey", client.APIKey(), "baseURL", client.BaseURL(), "error", err)
		return nil
	}
	if err != nil {
		return keyCheckError(client, err)
	}
	ok, markets := info.CanTrade()
	switch {
	case info.ReadOnly:
		return fmt.Errorf("API key %s is read-only: a cancel needs a key with trade permission", client.APIKey())
	case !ok:
		return fmt.Errorf("API key %s has no trade permission (ContractTrade Order, Spot SpotTrade or Options OptionsTrade)", client.APIKey())
	}
	attrs := []any{"apiKey", client.APIKey(), "trades", strings.Join(markets, ",")}
	if !info.ExpiresAt.IsZero() {
		attrs = append(attrs, "expiresAt", info.ExpiresAt)
		if info.ExpiresAt.Sub(now()) < 7*24*time.Hour {
			log.Warn("API key expires within a week", "apiKey", client.APIKey(), "expiresAt", info.ExpiresAt)
		}
	}
	log.Info("API key checked", attrs...)
	return nil
}

func keyCheckError(client *bybit.Client, err error) error {
	var apiErr *bybit.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.RetCode {
		case 10003:
			return fmt.Errorf("API key %s is not valid at %s (retCode 10003): is it a key of another environment? check BYBIT_ENV and BYBIT_BASE_URL", client.APIKey(), client.BaseURL())
		case 10004:
			return fmt.Errorf("API key %s: signature rejected (retCode 10004): the secret does not belong to this key", client.APIKey())
		case 10005:
			return fmt.Errorf("API key %s lacks permission to read its own settings (retCode 10005)", client.APIKey())
		case 10010:
			return fmt.Errorf("API key %s does not allow this IP address (retCode 10010): add it to the key's IP list", client.APIKey())
		}
	}
	return fmt.Errorf("API key check at %s: %w", client.BaseURL(), err)
}
