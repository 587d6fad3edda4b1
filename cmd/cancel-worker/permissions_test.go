package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// The README's permissions example is run as written: the worker works with
// its permissions, the risk engine can publish cancels but not results, and a
// reader can read results.
func TestREADMEPermissionsExample(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	block := regexp.MustCompile("(?s)An\\s+example to adapt.*?```\\n(accounts \\{.*?)```").FindSubmatch(readme)
	require.NotNil(t, block, "the README's permissions example")
	conf := "RISK_PASSWORD: risk-pw\nWORKER_PASSWORD: worker-pw\nREADER_PASSWORD: reader-pw\nDESK_PASSWORD: desk-pw\n" + string(block[1])
	confFile := filepath.Join(t.TempDir(), "nats.conf")
	require.NoError(t, os.WriteFile(confFile, []byte(conf), 0o600))
	ns, err := embedded.StartNATS(embedded.NATSOptions{StoreDir: t.TempDir(), ConfigFile: confFile})
	require.NoError(t, err)
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	url := strings.Replace(ns.ClientURL(), "nats://", "", 1)

	// The stack gives the simulated exchange and the worker's environment;
	// its own nats-server is not used here.
	s := newStack(t, bybittest.Options{}, nil)
	s.env["NATS_URL"] = "nats://" + url
	s.env["NATS_USER"], s.env["NATS_PASSWORD"] = "cancel-worker", "worker-pw"
	// Account hedge, with its own subjects, for the hedge desk.
	accounts := filepath.Join(t.TempDir(), "accounts.yaml")
	require.NoError(t, os.WriteFile(accounts, []byte(`accounts:
  hedge:
    apiKey: `+bybittest.DemoAPIKey+`
    apiSecret: `+bybittest.DemoAPISecret+`
    cancelSubject: orders.hedge.cancel
    cancelAllSubject: orders.hedge.cancel-all
    syncCancelSubject: orders.sync.hedge.cancel
    syncCancelAllSubject: orders.sync.hedge.cancel-all
`), 0o600))
	s.env["BYBIT_ACCOUNTS_FILE"] = accounts
	s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderID: "perm-1"})
	s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderID: "perm-sync"})
	s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderID: "perm-desk"})
	s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderID: "perm-cmd"})
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, envFunc(s.env), &logs, &logs) }()
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "worker started") }, waitFor, 10*time.Millisecond, "%s", &logs)

	risk, err := nats.Connect("nats://"+url, nats.UserInfo("risk-engine", "risk-pw"))
	require.NoError(t, err)
	defer risk.Close()
	rjs, err := jetstream.New(risk)
	require.NoError(t, err)
	_, err = rjs.Publish(context.Background(), "orders.cancel", []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"perm-1"}`))
	require.NoError(t, err, "the risk engine publishes cancels")
	pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err = rjs.Publish(pctx, "orders.cancel.ack", []byte(`{"forged":true}`))
	pcancel()
	require.Error(t, err, "the risk engine cannot publish results")

	reader, err := nats.Connect("nats://"+url, nats.UserInfo("reader", "reader-pw"))
	require.NoError(t, err)
	defer reader.Close()
	readJS, err := jetstream.New(reader)
	require.NoError(t, err)
	first := func(subject string) []byte {
		var data []byte
		require.Eventually(t, func() bool {
			c, err := readJS.OrderedConsumer(context.Background(), "ORDERS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
			if err != nil {
				return false
			}
			m, err := c.Next(jetstream.FetchMaxWait(time.Second))
			if err != nil {
				return false
			}
			data = m.Data()
			return true
		}, waitFor, 50*time.Millisecond, "%s", &logs)
		return data
	}
	got, err := messages.DecodeResult(first("orders.cancel.ack"))
	require.NoError(t, err)
	require.Equal(t, messages.StatusCancelled, got.Status)
	require.Equal(t, "perm-1", got.OrderID)
	confirmation, err := messages.DecodeConfirmation(first("orders.cancel.confirmed"))
	require.NoError(t, err)
	require.Equal(t, "Cancelled", confirmation.OrderStatus, "the worker publishes confirmations")

	// The reader can review the stream with replay.
	env := map[string]string{"NATS_URL": "nats://" + url, "NATS_USER": "reader", "NATS_PASSWORD": "reader-pw"}
	var out, errOut bytes.Buffer
	require.NoError(t, runReplay(context.Background(), nil, envFunc(env), strings.NewReader(""), &out, &errOut), errOut.String())
	require.Contains(t, out.String(), "cancelled 1")

	// Sync requests (orders.sync.>, $SRV.>).
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "sync service started") }, waitFor, 10*time.Millisecond, "%s", &logs)
	reply, err := risk.Request("orders.sync.cancel", []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"perm-sync"}`), waitFor)
	require.NoError(t, err, "the risk engine sends sync cancels")
	answer, err := messages.DecodeAnswer(reply.Data)
	require.NoError(t, err)
	require.Equal(t, messages.StatusCancelled, answer.Status, "%s", reply.Data)
	_, err = risk.Request("$SRV.INFO.cancel-worker", nil, waitFor)
	require.NoError(t, err, "the risk engine sees the service (nats micro info)")

	// The hedge desk cancels for account hedge, on its own subjects only.
	desk, err := nats.Connect("nats://"+url, nats.UserInfo("hedge-desk", "desk-pw"))
	require.NoError(t, err)
	defer desk.Close()
	reply, err = desk.Request("orders.sync.hedge.cancel", []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"perm-desk"}`), waitFor)
	require.NoError(t, err, "the desk sends sync cancels on its own subject")
	answer, err = messages.DecodeAnswer(reply.Data)
	require.NoError(t, err)
	require.Equal(t, messages.StatusCancelled, answer.Status, "%s", reply.Data)
	require.Equal(t, "hedge", answer.Account)
	for _, subject := range []string{"orders.sync.cancel", "orders.cancel"} {
		_, err = desk.Request(subject, []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"perm-1","account":"hedge"}`), 2*time.Second)
		require.Error(t, err, "the desk is refused on %s", subject)
	}
	// The operator's command, with the desk's credentials, on the desk's subject.
	deskEnv := map[string]string{"NATS_URL": "nats://" + url, "NATS_USER": "hedge-desk", "NATS_PASSWORD": "desk-pw"}
	out.Reset()
	errOut.Reset()
	require.NoError(t, runCancel(context.Background(), false, []string{"--subject", "orders.sync.hedge.cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", "perm-cmd"},
		envFunc(deskEnv), &out, &errOut), errOut.String())
	require.Contains(t, out.String(), "cancelled  linear BTCUSDT orderId=perm-cmd account=hedge")
	cancel()
	require.NoError(t, <-done)
}
