package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// binary is the cancel-worker built once for the tests that need a real
// process (signals, exit codes).
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cancel-worker-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "cancel-worker")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build cancel-worker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const waitFor = 60 * time.Second

const testSecret = "this-is-the-test-secret-0123456789"

type syncBuffer = embedded.LogBuffer

func envFunc(m map[string]string) lookupEnv {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	t.Parallel()
	base := map[string]string{"BYBIT_API_KEY": "k", "BYBIT_API_SECRET": testSecret}
	cases := map[string]struct {
		env  map[string]string
		args []string
		want string
	}{
		"no credentials":             {env: map[string]string{}, want: "BYBIT_API_KEY"},
		"key without secret":         {env: map[string]string{"BYBIT_API_KEY": "k"}, want: "BYBIT_API_SECRET"},
		"secret without key":         {env: map[string]string{"BYBIT_API_SECRET": testSecret}, want: "BYBIT_API_KEY"},
		"bad duration":               {env: map[string]string{"NATS_ACK_WAIT": "5"}, want: "NATS_ACK_WAIT"},
		"negative duration":          {env: map[string]string{"WORKER_MAX_AGE": "-1m"}, want: "WORKER_MAX_AGE"},
		"bad number":                 {env: map[string]string{"WORKER_CONCURRENCY": "many"}, want: "WORKER_CONCURRENCY"},
		"bad env":                    {env: map[string]string{"BYBIT_ENV": "prod"}, want: "BYBIT_ENV"},
		"bad base url":               {env: map[string]string{"BYBIT_BASE_URL": "api.bybit.com"}, want: "BYBIT_BASE_URL"},
		"bad ip limit":               {env: map[string]string{"BYBIT_IP_LIMIT": "500"}, want: "BYBIT_IP_LIMIT"},
		"bad limits":                 {env: map[string]string{"BYBIT_LIMITS": "cancel/perp=3"}, want: "BYBIT_LIMITS"},
		"bad bool":                   {env: map[string]string{"BYBIT_BAN_RELEASE": "sometimes"}, want: "BYBIT_BAN_RELEASE"},
		"bad log level":              {env: map[string]string{"LOG_LEVEL": "loud"}, want: "LOG_LEVEL"},
		"bad flag value":             {args: []string{"--nats-ack-wait", "soon"}, want: "NATS_ACK_WAIT"},
		"flag beats env":             {env: map[string]string{"NATS_ACK_WAIT": "5s"}, args: []string{"--nats-ack-wait=x"}, want: "NATS_ACK_WAIT"},
		"both secret sources":        {env: map[string]string{"BYBIT_API_SECRET_FILE": "/nonexistent"}, want: "BYBIT_API_SECRET and BYBIT_API_SECRET_FILE"},
		"unreadable secret":          {env: map[string]string{"BYBIT_API_SECRET": "", "BYBIT_API_SECRET_FILE": "/nonexistent/secret"}, want: "BYBIT_API_SECRET_FILE"},
		"dupe window too short":      {env: map[string]string{"NATS_DUPLICATE_WINDOW": "10m"}, want: "NATS_DUPLICATE_WINDOW (10m0s) must be at least WORKER_MAX_AGE (50m0s)"},
		"bad ws url":                 {env: map[string]string{"BYBIT_WS_URL": "https://stream.bybit.com/v5/private"}, want: "BYBIT_WS_URL"},
		"bad confirm":                {env: map[string]string{"CONFIRM": "maybe"}, want: "CONFIRM"},
		"bad confirm timeout":        {env: map[string]string{"CONFIRM_TIMEOUT": "5"}, want: "CONFIRM_TIMEOUT"},
		"confirmed is an input":      {env: map[string]string{"NATS_CONFIRMED_SUBJECT": "orders.cancel"}, want: "NATS_CANCEL_SUBJECT and NATS_CONFIRMED_SUBJECT"},
		"progress captures an input": {env: map[string]string{"NATS_CANCEL_ALL_PROGRESS_SUBJECT": "orders"}, want: `NATS_CANCEL_ALL_PROGRESS_SUBJECT "orders" overlaps NATS_CANCEL_SUBJECT`},
		"progress is a wildcard":     {env: map[string]string{"NATS_CANCEL_ALL_PROGRESS_SUBJECT": "orders.*"}, want: "must be a literal subject"},
		"bad dcp window":             {env: map[string]string{"BYBIT_DCP_WINDOW": "30"}, want: "BYBIT_DCP_WINDOW"},
		"dcp window too long":        {env: map[string]string{"BYBIT_DCP_WINDOW": "10m"}, want: "BYBIT_DCP_WINDOW must be whole seconds from 3s to 300s"},
		"dcp without confirm":        {env: map[string]string{"BYBIT_DCP_WINDOW": "30s", "CONFIRM": "false"}, want: "BYBIT_DCP_WINDOW needs CONFIRM=true"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			if name != "no credentials" && name != "key without secret" && name != "secret without key" {
				for k, v := range base {
					env[k] = v
				}
			}
			for k, v := range tc.env {
				env[k] = v
			}
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := run(ctx, append([]string{"run"}, tc.args...), envFunc(env), &out, &out)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error()+out.String(), testSecret)
		})
	}
}

func TestHelpShowsNoSecret(t *testing.T) {
	t.Parallel()
	secretFile := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secretFile, []byte(testSecret+"\n"), 0o600))
	for _, args := range [][]string{{"--help"}, {"help", "run"}, {"run", "-h"}, {"demo", "--help"}, {"sim", "--help"}, {"replay", "--help"}, {"healthcheck", "--help"}} {
		cmd := exec.Command(binary, args...)
		cmd.Env = append(os.Environ(), "BYBIT_API_SECRET="+testSecret, "BYBIT_API_KEY=key-id", "BYBIT_API_SECRET_FILE="+secretFile, "NATS_PASSWORD="+testSecret)
		out, _ := cmd.CombinedOutput()
		require.NotContains(t, string(out), testSecret, "%v", args)
		require.NotContains(t, string(out), "key-id", "--help shows defaults, not values from the environment")
		if args[0] == "replay" {
			require.Contains(t, string(out), "-since")
			require.Contains(t, string(out), "NATS_PASSWORD")
			require.NotContains(t, string(out), "-nats-password")
			continue
		}
		if args[0] == "--help" || args[0] == "healthcheck" {
			// The top-level help lists the commands (TestHelpTexts);
			// run's flags are in `help run`.
			continue
		}
		if args[0] != "demo" && args[0] != "sim" {
			require.Contains(t, string(out), "-nats-url")
			require.Contains(t, string(out), "BYBIT_API_SECRET")
			require.NotContains(t, string(out), "-bybit-api-secret", "secrets have no flag twin")
		}
	}
}

func TestBinaryExitsNonZeroWithOneLineNamingTheVariable(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(binary)
	cmd.Env = []string{"BYBIT_API_KEY=k", "BYBIT_API_SECRET=" + testSecret, "NATS_MAX_DELIVER=lots"}
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	require.Equal(t, 1, exitErr.ExitCode())
	require.Equal(t, 1, strings.Count(strings.TrimSpace(string(out)), "\n")+1, "%s", out)
	require.Contains(t, string(out), "NATS_MAX_DELIVER")
}

func TestDemoRunsTheScenario(t *testing.T) {
	t.Parallel()
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, run(ctx, []string{"demo"}, envFunc(nil), &out, &errOut), "%s\n%s", out.String(), errOut.String())
	require.Contains(t, out.String(), "every request got exactly the result and the confirmation the scenario expects")
	require.Contains(t, out.String(), "cancelled 30, invalid 2, not_open 1")
	require.Contains(t, out.String(), "confirmations: 30 (Cancelled 29, Filled 1), by websocket 30")
	require.Contains(t, out.String(), "BTC-27DEC24-100000-C")
	require.Contains(t, out.String(), "replay of this stream")
	require.Contains(t, out.String(), "answered by a replay: 0; still open (unanswered or failed, no replay answered): 0")
}

// stack is an embedded nats-server and a simulated exchange for the tests
// that run the worker as a user would.
type stack struct {
	t   *testing.T
	nc  *nats.Conn
	js  jetstream.JetStream
	ex  *bybittest.Exchange
	url string
	env map[string]string
}

func newStack(t *testing.T, exOpts bybittest.Options, wrap func(http.Handler) http.Handler) *stack {
	t.Helper()
	ns, err := embedded.StartNATS(embedded.NATSOptions{StoreDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	ex := bybittest.New(exOpts)
	var h http.Handler = ex
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return &stack{t: t, nc: nc, js: js, ex: ex, url: srv.URL, env: map[string]string{
		"NATS_URL":                ns.ClientURL(),
		"BYBIT_BASE_URL":          srv.URL,
		"BYBIT_API_KEY":           bybittest.DemoAPIKey,
		"BYBIT_API_SECRET":        bybittest.DemoAPISecret,
		"BYBIT_IP_LIMIT":          "off",
		"WORKER_SHUTDOWN_TIMEOUT": "10s",
		"LOG_LEVEL":               "debug",
		"HTTP_ADDR":               "",
	}}
}

func (s *stack) environ() []string {
	var out []string
	for k, v := range s.env {
		out = append(out, k+"="+v)
	}
	return out
}

// startBinary runs `cancel-worker run` on the stack and waits until it has
// bound its consumer; the process is killed at the end of the test if it
// still runs.
func (s *stack) startBinary() (*exec.Cmd, *syncBuffer) {
	s.t.Helper()
	var logs syncBuffer
	cmd := exec.Command(binary, "run")
	cmd.Env = s.environ()
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(s.t, cmd.Start())
	s.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	require.Eventually(s.t, func() bool { return strings.Contains(logs.String(), "worker started") }, waitFor, 10*time.Millisecond, "%s", &logs)
	return cmd, &logs
}

// results reads every result stored in the stream.
// publishCancels publishes cancels of n linear BTCUSDT orders prefix-0 …
// prefix-(n-1).
func (s *stack) publishCancels(prefix string, n int) {
	s.t.Helper()
	for i := range n {
		_, err := s.js.Publish(context.Background(), "orders.cancel", []byte(fmt.Sprintf(`{"category":"linear","symbol":"BTCUSDT","orderId":"%s-%d"}`, prefix, i)))
		require.NoError(s.t, err)
	}
}

func (s *stack) results() []messages.Result {
	s.t.Helper()
	var out []messages.Result
	s.readAll([]string{"orders.cancel.ack", "orders.cancel.rejected"}, func(m jetstream.Msg) {
		r, err := messages.DecodeResult(m.Data())
		require.NoError(s.t, err)
		out = append(out, r)
	})
	return out
}

// confirmations reads every confirmation stored, with its Nats-Msg-Id.
func (s *stack) confirmations() map[string][]messages.Confirmation {
	s.t.Helper()
	out := map[string][]messages.Confirmation{}
	s.readAll([]string{"orders.cancel.confirmed"}, func(m jetstream.Msg) {
		conf, err := messages.DecodeConfirmation(m.Data())
		require.NoError(s.t, err)
		id := m.Headers().Get(nats.MsgIdHdr)
		out[id] = append(out[id], conf)
	})
	return out
}

// readAll hands every message stored on subjects to each, in stream order
// (nothing when the worker has not created the stream yet).
func (s *stack) readAll(subjects []string, each func(jetstream.Msg)) {
	s.t.Helper()
	c, err := s.js.OrderedConsumer(context.Background(), "ORDERS", jetstream.OrderedConsumerConfig{FilterSubjects: subjects})
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return
	}
	require.NoError(s.t, err)
	for {
		batch, err := c.FetchNoWait(1000)
		require.NoError(s.t, err)
		n := 0
		for m := range batch.Messages() {
			each(m)
			n++
		}
		if n == 0 {
			return
		}
	}
}

func TestKeyCheckAtStartUp(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{Accounts: []bybittest.Account{
		{APIKey: "read-only", Secret: testSecret, ReadOnly: true},
		{APIKey: "no-trade", Secret: testSecret, Permissions: map[string][]string{"Wallet": {"AccountTransfer"}}},
	}}, nil)
	for key, want := range map[string]string{
		"read-only":        "read-only",
		"no-trade":         "no trade permission",
		"key-from-mainnet": "another environment",
	} {
		env := map[string]string{}
		for k, v := range s.env {
			env[k] = v
		}
		env["BYBIT_API_KEY"] = key
		env["BYBIT_API_SECRET"] = testSecret
		var logs syncBuffer
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		err := run(ctx, nil, envFunc(env), &logs, &logs)
		cancel()
		require.Error(t, err, key)
		require.Contains(t, err.Error(), want, key)
		require.NotContains(t, err.Error()+logs.String(), testSecret)
	}
}

func TestKeyCheckRetriesNetworkFailures(t *testing.T) {
	t.Parallel()
	var failures atomic.Int32
	s := newStack(t, bybittest.Options{}, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && failures.Add(1) <= 3 {
				http.Error(w, "<html>502 Bad Gateway</html>", http.StatusBadGateway)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	o := s.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, envFunc(s.env), &logs, &logs) }()
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "worker started") }, waitFor, 10*time.Millisecond)
	_, err := s.js.Publish(context.Background(), "orders.cancel", []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"`+o.OrderID+`"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(s.results()) == 1 }, waitFor, 20*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	require.Contains(t, logs.String(), "failed; retrying")
}

// The secret, read from a file, must not reach any log line at debug level,
// through start-up, successes, failures and shutdown.
func TestSecretsNeverReachTheLogs(t *testing.T) {
	t.Parallel()
	secret := "file-secret-" + testSecret
	s := newStack(t, bybittest.Options{AutoCreate: true, Accounts: []bybittest.Account{{APIKey: "file-key", Secret: secret}}}, nil)
	secretFile := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secretFile, []byte(secret+"\n"), 0o600))
	delete(s.env, "BYBIT_API_SECRET")
	s.env["BYBIT_API_KEY"] = "file-key"
	s.env["BYBIT_API_SECRET_FILE"] = secretFile
	s.ex.InjectFault(bybittest.Fault{Status: 502, Body: "bad gateway"}, bybittest.Fault{RetCode: 10004, RetMsg: "error sign!"})
	for _, format := range []string{"text", "json"} {
		s.env["LOG_FORMAT"] = format
		var logs syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(ctx, nil, envFunc(s.env), &logs, &logs) }()
		before := len(s.results())
		for i := range 3 {
			_, err := s.js.Publish(context.Background(), "orders.cancel", []byte(fmt.Sprintf(`{"category":"linear","symbol":"BTCUSDT","orderId":"%s-%d"}`, format, i)))
			require.NoError(t, err)
		}
		_, err := s.js.Publish(context.Background(), "orders.cancel", []byte(`not json`))
		require.NoError(t, err)
		require.Eventually(t, func() bool { return len(s.results()) == before+4 }, waitFor, 20*time.Millisecond)
		cancel()
		require.NoError(t, <-done)
		require.Contains(t, logs.String(), "BYBIT_API_SECRET_FILE")
		require.NotContains(t, logs.String(), secret, format)
	}
}

// SIGTERM mid-burst: the process exits 0 by itself; requests already sent get
// their true result; after a restart every request has exactly one result.
func TestSIGTERMMidBurstLosesNothing(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{AutoCreate: true, Latency: 150 * time.Millisecond}, nil)
	cmd, logs := s.startBinary()
	const n = 40
	s.publishCancels("burst", n)
	// Mid-burst: some answered, the rest waiting on the 10/s limit.
	require.Eventually(t, func() bool { return len(s.results()) >= 5 }, waitFor, 10*time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		require.NoError(t, err, "exit status after SIGTERM\n%s", logs)
	case <-time.After(waitFor):
		_ = cmd.Process.Kill()
		t.Fatalf("no exit after SIGTERM\n%s", logs)
	}
	first := s.results()
	require.Less(t, len(first), n, "the stop came mid-burst")
	sent := 0
	for _, q := range s.ex.Requests() {
		if q.Path == "/v5/order/cancel" || q.Path == "/v5/order/cancel-batch" {
			sent++ // one entry per order, whichever endpoint carried it
		}
	}
	require.Equal(t, len(first), sent, "every request that was sent got its result before the exit")

	cmd, logs = s.startBinary()
	require.Eventually(t, func() bool { return len(s.results()) >= n }, waitFor, 20*time.Millisecond, "%s", logs)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait())
	bySeq := map[uint64]int{}
	for _, r := range s.results() {
		bySeq[r.RequestSeq]++
		require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	}
	require.Len(t, bySeq, n)
	for seq, c := range bySeq {
		require.Equal(t, 1, c, "request %d", seq)
	}
}
