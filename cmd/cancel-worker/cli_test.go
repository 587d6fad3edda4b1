package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

func TestVersionCommandAndFlag(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out, errOut bytes.Buffer
		require.NoError(t, run(context.Background(), args, envFunc(nil), &out, &errOut), "%v", args)
		require.Equal(t, readBuildInfo().String()+"\n", out.String())
		require.Contains(t, out.String(), runtime.Version())
		require.Empty(t, errOut.String())
	}

	// A release build sets the version with -ldflags.
	bin := filepath.Join(t.TempDir(), "cancel-worker")
	build := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X main.version=v1.4.2 -X main.revision=0123abc -X main.buildDate=2026-12-01T09:00:00Z", ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	out, err = exec.Command(bin, "version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, fmt.Sprintf("cancel-worker v1.4.2 (revision 0123abc, built 2026-12-01T09:00:00Z, %s)\n", runtime.Version()), string(out))
}

func TestBuildInfoIsLoggedAndExported(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	s.env["LOG_FORMAT"] = "json"
	base, logs, stop := startWorker(t, s.env)
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == http.StatusOK }, waitFor, 10*time.Millisecond, "%s", logs)
	b := readBuildInfo()
	families := scrape(t, base)
	require.Equal(t, 1.0, value(families, "cancel_worker_build_info", map[string]string{
		"version": b.Version, "revision": b.Revision, "goversion": runtime.Version(),
	}))
	require.NoError(t, stop())
	var start map[string]any
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"msg":"cancel-worker"`) {
			require.NoError(t, json.Unmarshal([]byte(line), &start))
		}
	}
	require.Equal(t, b.Version, start["version"], "%s", logs)
	require.Equal(t, b.Revision, start["revision"])
	require.Equal(t, runtime.Version(), start["goVersion"])
}

func TestJSONLogsWriteDurationsAsGoDurations(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := newLogger(&buf, slog.LevelInfo, "json")
	log.With("timeout", 20*time.Second).Info("result", "rateLimitWait", 29173*time.Nanosecond,
		slog.Group("lane", "wait", 1500*time.Millisecond), "attempts", 2)
	var line map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &line), buf.String())
	require.Equal(t, "20s", line["timeout"])
	require.Equal(t, "29.173µs", line["rateLimitWait"])
	require.Equal(t, map[string]any{"wait": "1.5s"}, line["lane"])
	require.Equal(t, 2.0, line["attempts"], "numbers stay numbers")
}

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{}, nil)
	base, logs, stop := startWorker(t, s.env)
	addr := strings.TrimPrefix(base, "http://")
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == http.StatusOK }, waitFor, 10*time.Millisecond, "%s", logs)

	// A running, ready worker: exit 0, by the flag or by HTTP_ADDR as the
	// worker itself reads it (":port" is this host).
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"healthcheck", "--http-addr", addr}, envFunc(nil), &out, &out))
	require.Contains(t, out.String(), "ready")
	cmd := exec.Command(binary, "healthcheck")
	cmd.Env = []string{"HTTP_ADDR=:" + port}
	got, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", got)
	require.NoError(t, stop())

	// No worker there any more: exit 1 with the reason.
	cmd = exec.Command(binary, "healthcheck")
	cmd.Env = []string{"HTTP_ADDR=" + addr}
	got, err = cmd.CombinedOutput()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "%s", got)
	require.Equal(t, 1, exitErr.ExitCode())
	require.Contains(t, string(got), "not ready")
	require.Contains(t, string(got), "connection refused")

	// A worker that answers 503: exit 1 with what it said.
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/readyz", r.URL.Path)
		http.Error(w, "NATS disconnected", http.StatusServiceUnavailable)
	}))
	t.Cleanup(notReady.Close)
	err = run(context.Background(), []string{"healthcheck", "--http-addr", strings.TrimPrefix(notReady.URL, "http://")}, envFunc(nil), &out, &out)
	require.ErrorContains(t, err, "503 Service Unavailable: NATS disconnected")

	err = run(context.Background(), []string{"healthcheck"}, envFunc(map[string]string{"HTTP_ADDR": ""}), &out, &out)
	require.ErrorContains(t, err, "HTTP_ADDR is empty")
}

func TestReadyzURL(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]string{
		":9478":          "http://127.0.0.1:9478/readyz",
		"0.0.0.0:9478":   "http://127.0.0.1:9478/readyz",
		"[::]:9478":      "http://[::1]:9478/readyz",
		"10.0.0.5:9100":  "http://10.0.0.5:9100/readyz",
		"localhost:9478": "http://localhost:9478/readyz",
	} {
		got, err := readyzURL(addr)
		require.NoError(t, err, addr)
		require.Equal(t, want, got, addr)
	}
	_, err := readyzURL("9478")
	require.ErrorContains(t, err, "HTTP_ADDR")
}

func TestOnOffSettingsAreBooleanFlags(t *testing.T) {
	t.Parallel()
	parse := func(env map[string]string, args ...string) values {
		t.Helper()
		v, err := parseSettings("run", settings, args, envFunc(env), &bytes.Buffer{}, nil)
		require.NoError(t, err, "%v", args)
		return v
	}
	require.Equal(t, "true", parse(map[string]string{"CONFIRM": "false"}, "--confirm")["CONFIRM"], "a bare switch is on, and a flag beats the environment")
	require.Equal(t, "false", parse(nil, "--confirm=false")["CONFIRM"])
	v := parse(nil, "--bybit-batch", "--nats-url", "nats://a:4222", "--bybit-ban-release")
	require.Equal(t, "true", v["BYBIT_BATCH"])
	require.Equal(t, "nats://a:4222", v["NATS_URL"], "a switch does not swallow the next flag")
	require.Equal(t, "true", v["BYBIT_BAN_RELEASE"])
	require.Equal(t, "false", parse(nil)["BYBIT_BAN_RELEASE"])

	// Every setting whose default is true or false is a switch.
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	for _, s := range settings {
		if s.isBool() {
			fs.Var(settingFlag{value: new(string), boolean: true}, s.flagName(), "")
		}
	}
	require.NoError(t, fs.Parse([]string{"--confirm", "--bybit-batch=false"}))

	// A bad value still names the setting.
	err := run(context.Background(), []string{"run", "--confirm=maybe"}, envFunc(map[string]string{"BYBIT_API_KEY": "k", "BYBIT_API_SECRET": testSecret}), &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorContains(t, err, `CONFIRM: "maybe" is not true or false`)
}

func TestHelpTexts(t *testing.T) {
	t.Parallel()
	help := func(args ...string) (string, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, envFunc(nil), &out, &errOut)
		if err != nil {
			require.ErrorIs(t, err, flag.ErrHelp, "%v", args)
		}
		require.Empty(t, errOut.String(), "help asked for goes to stdout (%v)", args)
		return out.String(), errOut.String()
	}

	top, _ := help("--help")
	for _, args := range [][]string{{"-h"}, {"help"}} {
		got, _ := help(args...)
		require.Equal(t, top, got)
	}
	require.Less(t, strings.Count(top, "\n"), 20, "the top-level help is a list of commands, not run's flags:\n%s", top)
	for _, c := range commands {
		require.Regexp(t, `(?m)^  `+c.name+` +\S.*$`, top, "one line for %s", c.name)
		require.NotEmpty(t, c.about, c.name)

		cmdHelp, _ := help(c.name, "--help")
		require.True(t, strings.HasPrefix(cmdHelp, "Usage: cancel-worker "+c.name+" [flags]\n\n"+c.about+"\n"), "%s --help starts with what it does:\n%s", c.name, cmdHelp)
		if c.name != "version" {
			require.Contains(t, cmdHelp, "\nFlags:\n", c.name)
		}
		require.NotContains(t, cmdHelp, "Usage of", c.name)
		viaHelp, _ := help("help", c.name)
		require.Equal(t, cmdHelp, viaHelp, "help %s is %s --help", c.name, c.name)
	}

	runHelp, _ := help("help", "run")
	require.Contains(t, runHelp, "  --confirm\n")
	require.Contains(t, runHelp, "(default true; --confirm=false turns it off)")
	require.Contains(t, runHelp, "  --nats-url string\n")
	require.Contains(t, runHelp, "  --nats-context string\n")

	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"help", "nope"}, envFunc(nil), &out, &errOut)
	require.ErrorContains(t, err, `unknown command "nope"`)
	err = run(context.Background(), []string{"nope"}, envFunc(nil), &out, &errOut)
	require.ErrorContains(t, err, `unknown command "nope"`)
	require.Contains(t, errOut.String(), "Commands:")

	// A mistyped flag is one line pointing at the help, not the help.
	cmd := exec.Command(binary, "demo", "--brust", "3")
	got, err := cmd.CombinedOutput()
	require.Error(t, err)
	require.Equal(t, "cancel-worker: demo: flag provided but not defined: --brust (see 'cancel-worker demo --help')\n", string(got))
}

func TestErrorLinesNameTheSetting(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	garbage := writeFileIn(t, dir, "bad.creds", "not a creds file\n")
	ctxFile := func(name, body string) string { return writeFileIn(t, dir, name+".json", body) }
	for name, tc := range map[string]struct {
		env  map[string]string
		want string
	}{
		"missing creds":       {map[string]string{"NATS_CREDS": filepath.Join(dir, "missing.creds")}, "NATS_CREDS: cannot read " + filepath.Join(dir, "missing.creds") + ": no such file or directory"},
		"not a creds file":    {map[string]string{"NATS_CREDS": garbage}, "NATS_CREDS: " + garbage + " holds no user JWT"},
		"stream with a dot":   {map[string]string{"NATS_STREAM": "orders.bad"}, `NATS_STREAM: "orders.bad" is not a valid JetStream name`},
		"consumer with space": {map[string]string{"NATS_CONSUMER": "cancel worker"}, `NATS_CONSUMER: "cancel worker" is not a valid JetStream name`},
		"bad max bytes":       {map[string]string{"NATS_STREAM_MAX_BYTES": "lots"}, `NATS_STREAM_MAX_BYTES: "lots" is not a size`},
		"missing context":     {map[string]string{"NATS_CONTEXT": "nope", "XDG_CONFIG_HOME": dir}, `NATS_CONTEXT: context "nope": cannot read ` + filepath.Join(dir, "nats", "context", "nope.json")},
		"context typo":        {map[string]string{"NATS_CONTEXT": ctxFile("typo", `{"url": "nats://x", "pasword": "context-secret"}`)}, `unknown key "pasword"; cancel-worker reads url, user, password`},
		"context unsupported": {map[string]string{"NATS_CONTEXT": ctxFile("domain", `{"url": "nats://x", "jetstream_domain": "hub"}`)}, `"jetstream_domain" is not supported by cancel-worker`},
		"context op ref":      {map[string]string{"NATS_CONTEXT": ctxFile("op", `{"url": "nats://x", "password": "op://vault/nats/context-secret"}`)}, `"password": op references are not supported`},
		"context not json":    {map[string]string{"NATS_CONTEXT": ctxFile("broken", `{"url": "nats://x", "password": "context-secret"`)}, "not valid JSON"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"BYBIT_API_KEY": "k", "BYBIT_API_SECRET": testSecret}
			for k, v := range tc.env {
				env[k] = v
			}
			for _, cmd := range []string{"run", "replay"} {
				if name == "bad max bytes" && cmd == "replay" || strings.HasPrefix(name, "stream") && cmd == "replay" || strings.HasPrefix(name, "consumer") && cmd == "replay" {
					continue // settings of the worker only
				}
				var out bytes.Buffer
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := run(ctx, []string{cmd}, envFunc(env), &out, &out)
				cancel()
				require.ErrorContains(t, err, tc.want, cmd)
				require.NotContains(t, err.Error()+out.String(), "context-secret")
				require.NotContains(t, err.Error()+out.String(), testSecret)
			}
		})
	}
}

// writeContext writes a nats CLI context as `nats context save` does, under
// <config>/nats/context/<name>.json.
func writeContext(t *testing.T, config, name string, c map[string]any) {
	t.Helper()
	dir := filepath.Join(config, "nats", "context")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	b, err := json.Marshal(c)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+".json"), b, 0o600))
}

func TestNATSContextConnectsRunAndReplay(t *testing.T) {
	t.Parallel()
	ns, err := embedded.StartNATS(embedded.NATSOptions{StoreDir: t.TempDir(), Configure: func(o *server.Options) {
		o.Username, o.Password = "ctx-user", "ctx-pa55-secret"
	}})
	require.NoError(t, err)
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	config := t.TempDir()
	pwFile := writeFileIn(t, config, "nats.password", "ctx-pa55-secret\n")
	writeContext(t, config, "trading", map[string]any{
		"description": "the trading cluster", "url": ns.ClientURL(), "user": "ctx-user", "password": "file://" + pwFile,
		"creds": "", "nkey": "", "cert": "", "key": "", "ca": "", "nsc": "", "jetstream_domain": "", "tls_first": false,
	})

	s := newStack(t, bybittest.Options{}, nil)
	delete(s.env, "NATS_URL")
	s.env["NATS_CONTEXT"] = "trading"
	s.env["XDG_CONFIG_HOME"] = config
	base, logs, stop := startWorker(t, s.env)
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == http.StatusOK }, waitFor, 10*time.Millisecond, "%s", logs)
	require.NoError(t, stop())
	require.NotContains(t, logs.String(), "ctx-pa55-secret")

	var out, errOut bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"replay"}, envFunc(s.env), &out, &errOut), "%s", &errOut)
	require.Contains(t, out.String(), "no requests in the window")

	// The environment beats the context: a wrong NATS_PASSWORD is used, and
	// refused.
	s.env["NATS_PASSWORD"] = "wrong-secret"
	err = run(context.Background(), []string{"replay"}, envFunc(s.env), &out, &errOut)
	require.ErrorContains(t, err, "check NATS_USER/NATS_PASSWORD")
}

func TestNATSContextFillsOnlyWhatIsNotSet(t *testing.T) {
	t.Parallel()
	config := t.TempDir()
	writeContext(t, config, "c", map[string]any{"url": "nats://ctx:4222", "user": "u", "password": "p", "ca": "~/ca.pem"})
	env := map[string]string{"NATS_CONTEXT": "c", "XDG_CONFIG_HOME": config, "HOME": "/home/op"}
	v, err := parseSettings("replay", replaySettings, nil, envFunc(env), &bytes.Buffer{}, nil)
	require.NoError(t, err)
	require.Equal(t, "nats://ctx:4222", v["NATS_URL"])
	require.Equal(t, "u", v["NATS_USER"])
	require.Equal(t, "/home/op/ca.pem", v["NATS_CA"])
	nc := (&parser{v: v}).natsConfig()
	require.NoError(t, nc.readSecrets(envFunc(env)))
	require.Equal(t, "p", nc.password.Reveal())

	env["NATS_URL"] = "nats://env:4222"
	env["NATS_PASSWORD_FILE"] = writeFileIn(t, config, "pw", "from-file\n")
	v, err = parseSettings("replay", replaySettings, []string{"--nats-user", "flag-user"}, envFunc(env), &bytes.Buffer{}, nil)
	require.NoError(t, err)
	require.Equal(t, "nats://env:4222", v["NATS_URL"])
	require.Equal(t, "flag-user", v["NATS_USER"])
	nc = (&parser{v: v}).natsConfig()
	require.NoError(t, nc.readSecrets(envFunc(env)))
	require.Equal(t, "from-file", nc.password.Reveal(), "NATS_PASSWORD_FILE beats the context's password")
}

// The stream's size and limit are exported, for an alert before it is full.
func TestStreamSizeAndLimitAreExported(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{AutoCreate: true}, nil)
	s.env["NATS_STREAM_MAX_BYTES"] = "1MiB"
	base, logs, stop := startWorker(t, s.env)
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == http.StatusOK }, waitFor, 10*time.Millisecond, "%s", logs)
	_, err := s.js.Publish(context.Background(), "orders.cancel", []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"o-1"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		f := scrape(t, base)
		return value(f, "cancel_worker_nats_stream_max_bytes", nil) == 1<<20 && value(f, "cancel_worker_nats_stream_bytes", nil) > 0
	}, waitFor, 20*time.Millisecond, "%s", logs)
	require.NoError(t, stop())
}
