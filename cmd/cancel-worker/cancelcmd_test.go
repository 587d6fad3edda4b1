package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// cancelCmd runs `cancel-worker <args>` against the stack and returns its
// exit code, stdout and stderr.
func (s *stack) cancelCmd(args ...string) (int, string, string) {
	s.t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = s.environ()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		require.NoError(s.t, err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
}

func TestCancelCommandExitCodes(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	_, logs := s.startBinary()
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "sync service started") }, waitFor, 10*time.Millisecond, "%s", logs)

	o := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "cmd-1"})
	code, out, errOut := s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", o.OrderID)
	require.Equal(t, 0, code, "cancelled: %s%s", out, errOut)
	require.Contains(t, out, "cancelled  linear BTCUSDT orderId="+o.OrderID)

	code, out, _ = s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-link-id", "cmd-1")
	require.Equal(t, 2, code, "not_open: %s", out)
	require.Contains(t, out, "not_open")

	o2 := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	code, out, errOut = s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", o2.OrderID, "--wait-confirmation", "--format", "json")
	require.Equal(t, 0, code, "cancelled and confirmed: %s%s", out, errOut)
	a, err := messages.DecodeAnswer([]byte(out))
	require.NoError(t, err)
	require.Equal(t, messages.StatusCancelled, a.Status)
	require.Len(t, a.Confirmations, 1)
	require.Equal(t, "Cancelled", a.Confirmations[0].OrderStatus)

	filled := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", FillOnCancel: true})
	code, out, errOut = s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", filled.OrderID, "--wait-confirmation")
	require.Equal(t, 5, code, "filled before the cancel landed: %s%s", out, errOut)
	require.Contains(t, out, "Filled")

	// A Nats-Msg-Id reused for another order: exit 1, nothing cancelled.
	o3 := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	o4 := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	code, out, errOut = s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", o3.OrderID, "--msg-id", "desk-reused")
	require.Equal(t, 0, code, "%s%s", out, errOut)
	code, out, errOut = s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", o4.OrderID, "--msg-id", "desk-reused")
	require.Equal(t, 1, code, "%s%s", out, errOut)
	require.Regexp(t, `the service answered 409: Nats-Msg-Id desk-reused was used at sequence \d+ for another message; nothing was stored`, errOut)
	st4, _ := s.ex.Order("linear", o4.OrderID)
	require.Equal(t, "New", st4.Status)

	code, _, errOut = s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT")
	require.Equal(t, 3, code, "invalid")
	require.Contains(t, errOut, "invalid")

	s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "ETHUSDT"})
	s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "ETHUSDT"})
	code, out, errOut = s.cancelCmd("cancel-all", "--category", "linear", "--symbol", "ETHUSDT")
	require.Equal(t, 0, code, "%s%s", out, errOut)
	require.Equal(t, 2, strings.Count(out, "\n  cancelled orderId="), out)
}

func TestCancelCommandTimeoutAndNoService(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	code, _, errOut := s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", "o-1")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "no cancel-worker service answers on orders.sync.cancel")

	// A service whose worker does not run: the request is stored, nothing
	// answers it.
	cfg := worker.Config{Subjects: messages.Subjects{Stream: "ORDERS", CancelSubject: "orders.cancel", CancelAllSubject: "orders.cancel-all",
		AckSubject: "orders.cancel.ack", RejectedSubject: "orders.cancel.rejected",
		SyncCancelSubject: "orders.sync.cancel", SyncCancelAllSubject: "orders.sync.cancel-all"}, DuplicateWindow: time.Hour, StreamReplicas: 1, MaxAge: time.Minute,
		SyncMaxTimeout: time.Minute}
	_, err := worker.EnsureStream(context.Background(), s.js, cfg)
	require.NoError(t, err)
	svc, err := worker.NewService(worker.ServiceConfig{Conn: s.nc, JS: s.js, Worker: cfg, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, svc.Start(context.Background()))
	t.Cleanup(svc.Stop)
	code, _, errOut = s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", "o-1", "--timeout", "200ms")
	require.Equal(t, 4, code, errOut)
	require.Contains(t, errOut, "timeout (stream ORDERS, sequence 1)")
}

// An operator's stream that captures the sync subjects: the worker runs, the
// sync service stays off, and /readyz says why.
func TestReadyzNamesASyncServiceThatIsOff(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	_, err := s.js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}, Duplicates: time.Hour})
	require.NoError(t, err)
	base, logs, stop := startWorker(t, s.env)
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == http.StatusOK }, waitFor, 10*time.Millisecond, "%s", logs)
	_, body := get(t, base+"/readyz")
	require.Contains(t, body, "ready; sync service off: stream ORDERS captures orders.sync.cancel, orders.sync.cancel-all")
	require.Contains(t, logs.String(), "sync service off")
	code, _, errOut := s.cancelCmd("cancel", "--category", "linear", "--symbol", "BTCUSDT", "--order-id", "o-1")
	require.Equal(t, 1, code, "the stream's receipt is not an answer: %s", errOut)
	require.Contains(t, errOut, "stream ORDERS stored the request on orders.sync.cancel (sequence 1) instead of the service answering it")
	require.NoError(t, stop())
}
