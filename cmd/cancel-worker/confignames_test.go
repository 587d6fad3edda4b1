package main

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// runFails runs `cancel-worker run` on the stack and returns its error.
func (s *stack) runFails() error {
	s.t.Helper()
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err := run(ctx, nil, envFunc(s.env), &logs, &logs)
	require.Error(s.t, err, "%s", &logs)
	return err
}

// The worker names its own fields; what `run` tells the operator names the
// accounts file, the account and its key.
func TestAccountProblemsNameTheAccountsFileKey(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{AutoCreate: true}, nil) // the configuration fails before any call
	s.env["BYBIT_ACCOUNTS_FILE"] = writeFileIn(t, t.TempDir(), "accounts.yaml", `
accounts:
  hedge:
    apiKey: hedge-key
    apiSecret: hedge-secret
    cancelSubject: orders.cancel
    syncCancelAllSubject: orders.sync.>
    dcpWindow: 2s
`)
	err := s.runFails()
	require.ErrorContains(t, err, `NATS_CANCEL_SUBJECT and BYBIT_ACCOUNTS_FILE: account "hedge" cancelSubject are both "orders.cancel"`)
	require.ErrorContains(t, err, `BYBIT_ACCOUNTS_FILE: account "hedge": subject "orders.sync.>" must be a literal subject`)
	require.ErrorContains(t, err, `BYBIT_ACCOUNTS_FILE: account "hedge": syncCancelAllSubject needs a cancelAllSubject to publish to`)
	require.ErrorContains(t, err, "BYBIT_ACCOUNTS_FILE: account hedge: dcpWindow must be whole seconds from 3s to 300s")
	var ce *worker.ConfigError
	require.ErrorAs(t, err, &ce, "the worker's error stays reachable")
	require.Contains(t, ce.Error(), `CancelSubject and Accounts["hedge"].Subjects.CancelSubject are both`)
}

// A stream of the operator's whose duplicate window is too short for
// WORKER_MAX_AGE: `run` says so with the setting's name.
func TestOperatorStreamDuplicateWindowNamesTheSetting(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{AutoCreate: true}, nil)
	_, err := s.js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "SHORT", Subjects: []string{"short.>"}, Duplicates: 10 * time.Minute})
	require.NoError(t, err)
	for k, v := range map[string]string{"NATS_STREAM": "SHORT", "NATS_CANCEL_SUBJECT": "short.cancel", "NATS_CANCEL_ALL_SUBJECT": "short.cancel-all",
		"NATS_ACK_SUBJECT": "short.ack", "NATS_REJECTED_SUBJECT": "short.rejected", "NATS_CANCEL_ALL_PROGRESS_SUBJECT": "short.progress",
		"NATS_CONFIRMED_SUBJECT": "short.confirmed"} {
		s.env[k] = v
	}
	require.ErrorContains(t, s.runFails(), "(10m0s) must be at least WORKER_MAX_AGE (50m0s)")
}

// Every problem Validate can find is told with a setting's name, and every
// field the settings table names is a field of worker.Config.
func TestEveryConfigProblemHasASettingName(t *testing.T) {
	t.Parallel()
	cfg := worker.Config{Confirm: true, MaxDeliver: 0, PinnedTTL: time.Millisecond, StreamReplicas: 9, LimitShare: 2,
		DCPWindow: time.Millisecond, SyncMaxTimeout: -1}
	cfg.CancelAllProgressSubject = "p.*"
	var ce *worker.ConfigError
	require.ErrorAs(t, cfg.Validate(), &ce)
	require.Greater(t, len(ce.Problems), 15)
	for _, p := range ce.Problems {
		_, ok := settingOf[p.Field.Name]
		require.True(t, ok, "%s has no setting", p.Field)
	}
	cfg = worker.DefaultConfig()
	cfg.DuplicateWindow = 10 * time.Minute
	require.EqualError(t, withSettingNames(cfg.Validate()),
		"NATS_DUPLICATE_WINDOW (10m0s) must be at least WORKER_MAX_AGE (50m0s) + 5m0s, or a redelivered request could get a second result")

	for _, s := range settings {
		if s.field != "" {
			_, ok := reflect.TypeFor[worker.Config]().FieldByName(s.field)
			require.True(t, ok, "%s: worker.Config has no field %s", s.env, s.field)
		}
	}
}
