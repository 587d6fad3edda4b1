package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// runWorkerUntil runs `cancel-worker run` in-process until want results are
// in the stream, then stops it.
func (s *stack) runWorkerUntil(want int) {
	s.t.Helper()
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, envFunc(s.env), &logs, &logs) }()
	require.Eventually(s.t, func() bool { return len(s.results()) >= want }, waitFor, 20*time.Millisecond, "%s", &logs)
	cancel()
	require.NoError(s.t, <-done)
}

// replayCmd runs `cancel-worker replay` with stdin.
func (s *stack) replayCmd(stdin string, args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err := runReplay(ctx, args, envFunc(s.env), strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

// requests counts the messages on the cancel subject.
func (s *stack) requests() uint64 {
	s.t.Helper()
	st, err := s.js.Stream(context.Background(), "ORDERS")
	require.NoError(s.t, err)
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter("orders.cancel"))
	require.NoError(s.t, err)
	return info.State.Subjects["orders.cancel"]
}

func lineOf(t *testing.T, out, s string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	t.Fatalf("no line has %q in\n%s", s, out)
	return ""
}

// An incident as the README tells it: a request acked without a result (a
// crash between the two, simulated here), one answered, one still waiting.
// Replay shows each for what it is, the resend is previewed, refused, then
// confirmed; the worker answers the resend, and the next replay shows the
// gap closed.
func TestReplayAndResendFinishWhatWasLeftUndone(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	ctx := context.Background()
	lost := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	done := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	later := s.ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "ETHUSDT"})
	publish := func(id, category, symbol, orderID string) uint64 {
		ack, err := s.js.Publish(ctx, "orders.cancel", []byte(fmt.Sprintf(`{"category":%q,"symbol":%q,"orderId":%q,"requestId":%q}`, category, symbol, orderID, id)))
		require.NoError(t, err)
		return ack.Sequence
	}

	// The lost request: delivered to the worker's consumer and acked, with
	// no result.
	wc := worker.Config{Subjects: messages.Subjects{Stream: "ORDERS", Consumer: "cancel-worker", CancelSubject: "orders.cancel", CancelAllSubject: "orders.cancel-all",
		AckSubject: "orders.cancel.ack", RejectedSubject: "orders.cancel.rejected"}, DuplicateWindow: time.Hour, StreamReplicas: 1,
		AckWait: 5 * time.Second, MaxDeliver: 20, MaxAckPending: 1000}
	_, err := worker.EnsureStream(ctx, s.js, wc)
	require.NoError(t, err)
	cons, _, err := worker.EnsureConsumer(ctx, s.js, wc)
	require.NoError(t, err)
	lostSeq := publish("ks-lost", "linear", "BTCUSDT", lost.OrderID)
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(waitFor), jetstream.FetchPriorityGroup(worker.PriorityGroup))
	require.NoError(t, err)
	for m := range batch.Messages() {
		require.NoError(t, m.DoubleAck(ctx))
	}
	publish("ks-done", "linear", "BTCUSDT", done.OrderID)
	s.runWorkerUntil(1)
	laterSeq := publish("ks-later", "spot", "ETHUSDT", later.OrderID)

	out, errOut, err := s.replayCmd("")
	require.NoError(t, err, errOut)
	require.Contains(t, lineOf(t, out, "ks-lost"), "unanswered")
	require.Contains(t, lineOf(t, out, "ks-done"), "cancelled")
	require.Contains(t, lineOf(t, out, "ks-later"), "pending")
	require.Contains(t, out, "3 requests from ")
	require.Contains(t, out, "cancelled 1, unanswered 1, pending 1")

	out, _, err = s.replayCmd("", "--category", "spot", "--format", "json")
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, "one request and the summary")
	var row map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &row))
	require.Equal(t, "ks-later", row["requestId"])
	require.Equal(t, "pending", row["status"])

	dir := t.TempDir()
	for _, name := range []string{"timeline.png", "timeline.svg"} {
		file := filepath.Join(dir, name)
		_, errOut, err := s.replayCmd("", "--plot", file)
		require.NoError(t, err, errOut)
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		require.Greater(t, len(b), 1000, name)
		if name == "timeline.png" {
			require.Equal(t, "\x89PNG", string(b[:4]))
		} else {
			require.Contains(t, string(b[:200]), "<svg")
		}
	}
	_, _, err = s.replayCmd("", "--plot", filepath.Join(dir, "timeline.pdf"))
	require.ErrorContains(t, err, ".png or .svg")

	before := s.requests()
	out, _, err = s.replayCmd("", "--resend", "--dry-run")
	require.NoError(t, err)
	require.Contains(t, out, fmt.Sprintf("PUB orders.cancel\nNats-Msg-Id: resend:%d\n\n{", lostSeq))
	require.Contains(t, out, fmt.Sprintf(`"requestId":"ks-lost/resend-%d","replayOf":"ks-lost","replayOfSeq":%d}`, lostSeq, lostSeq))
	require.Contains(t, out, "ks-later): pending")
	require.Contains(t, out, "dry run: nothing published")
	out, _, err = s.replayCmd("no\n", "--resend")
	require.NoError(t, err)
	require.Contains(t, out, "Type yes to publish")
	require.Contains(t, out, "not confirmed: nothing published")
	require.Equal(t, before, s.requests())

	out, _, err = s.replayCmd("yes\n", "--resend")
	require.NoError(t, err)
	require.Contains(t, out, "published 1 new, 0 already in the stream")
	require.Equal(t, before+1, s.requests())

	// The worker answers the waiting request and the resend.
	s.runWorkerUntil(3)
	out, _, err = s.replayCmd("", "--to-seq", fmt.Sprint(laterSeq))
	require.NoError(t, err)
	require.Contains(t, lineOf(t, out, "ks-lost "), "answered by its replay, sequence")
	require.Contains(t, lineOf(t, out, "ks-later"), "cancelled")
	require.Contains(t, out, "answered by a replay: 1; still open (unanswered or failed, no replay answered): 0")
	o, _ := s.ex.Order("linear", lost.OrderID)
	require.Equal(t, "Cancelled", o.Status, "the resend cancelled the order the lost request was for")

	out, _, err = s.replayCmd("", "--resend", "--yes")
	require.NoError(t, err)
	require.Contains(t, out, "already resent as sequence")
	require.Contains(t, out, "nothing to resend")
	require.Equal(t, before+1, s.requests(), "nothing resent twice")
}

func TestReplayFlagErrors(t *testing.T) {
	t.Parallel()
	for args, want := range map[string]string{
		"--format csv":                  "--format",
		"--yes":                         "go with --resend",
		"--resend --yes --dry-run":      "drop --yes",
		"--since yesterday":             "--since \"yesterday\" is neither",
		"--since 1h --until 2h":         "--until",
		"--from-seq 9 --to-seq 3":       "--to-seq 3 is below --from-seq 9",
		"--nats-url nats://127.0.0.1:1": "NATS_URL",
		"--nats-ack-wait 5s":            "flag provided but not defined",
		"--resend --include-rejected --yes --nats-url nats://127.0.0.1:1": "NATS_URL",
		"--include-cancel-all": "go with --resend",
		"--resend --include-cancel-all --yes --nats-url nats://127.0.0.1:1": "NATS_URL",
	} {
		var out bytes.Buffer
		err := runReplay(context.Background(), strings.Fields(args), envFunc(nil), strings.NewReader(""), &out, &out)
		require.ErrorContains(t, err, want, args)
	}
}
