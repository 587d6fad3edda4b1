// Command cancel-worker takes order-cancel requests from NATS JetStream, sends
// each as a signed Bybit v5 cancel within the rate limits, and publishes one
// result per request.
//
//	cancel-worker [run]   the worker, configured by environment variables or flags
//	cancel-worker demo    a self-contained scenario: embedded NATS, simulated Bybit, the worker
//	cancel-worker sim     the simulated exchange alone, for a local stack
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lmittmann/tint"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "cancel-worker:", err)
		os.Exit(1)
	}
}

const usage = `Usage: cancel-worker [command] [flags]

Commands:
  run    the worker (the default), configured by environment variables or flags
  demo   a scripted scenario against an embedded nats-server and a simulated Bybit
  sim    the simulated Bybit exchange alone (for a local stack)

Run 'cancel-worker <command> --help' for a command's flags.
`

// run dispatches to a subcommand. It reads the environment only through env.
func run(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runWorker(ctx, args, env, stderr)
	case "demo":
		return runDemo(ctx, args, stdout, stderr)
	case "sim":
		return runSim(ctx, args, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(tint.NewHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly + ".000", NoColor: !isTerminal(w)}))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func runWorker(ctx context.Context, args []string, env lookupEnv, stderr io.Writer) error {
	v, err := parseSettings("run", args, env, stderr, nil)
	if err != nil {
		return err
	}
	rc, err := buildRunConfig(v, env)
	if err != nil {
		return err
	}
	if err := rc.worker.Validate(); err != nil {
		return err
	}
	log := newLogger(stderr, rc.logLevel, rc.logFormat)
	log.Info("configuration", v.effective(env)...)
	rc.worker.Logger = log

	nc, err := connectNATS(rc.natsURL, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	client, err := bybit.NewClient(bybit.Options{
		BaseURL: rc.baseURL, APIKey: rc.apiKey, APISecret: rc.apiSecret,
		RecvWindow: rc.recvWindow, Timeout: rc.timeout,
	})
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rc.worker.Registerer = reg
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	w, err := worker.New(rc.worker, js, client)
	if err != nil {
		return err
	}
	if rc.httpAddr != "" {
		stopHTTP, err := serveHTTP(rc.httpAddr, reg, w.Ready, log)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}
	return runOn(ctx, nc, w, log)
}

// serveHTTP serves /metrics, /healthz (the process is alive) and /readyz (200
// when the worker can process requests, 503 with the reason otherwise).
func serveHTTP(addr string, reg *prometheus.Registry, ready func() (bool, string), log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("HTTP_ADDR: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := ready(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}

// runOn runs a worker on an open connection and drains the connection after.
func runOn(ctx context.Context, nc *nats.Conn, w *worker.Worker, log *slog.Logger) error {
	if err := w.Run(ctx); err != nil {
		return err
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		log.Warn("drain NATS connection", "error", err)
		return nil
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		log.Warn("NATS connection did not drain in 10s")
	}
	return nil
}

// connectNATS connects with reconnects forever, logging each disconnect and
// reconnect once.
func connectNATS(url string, log *slog.Logger) (*nats.Conn, error) {
	host, _ := os.Hostname()
	nc, err := nats.Connect(url,
		nats.Name("cancel-worker@"+host),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("NATS disconnected", "error", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("NATS reconnected", "server", c.ConnectedUrlRedacted())
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("NATS_URL: connect to %s: %w", redactURLs(url), err)
	}
	return nc, nil
}

// redactURLs hides passwords in nats://user:pass@host URLs.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
				parts[i] = u[:scheme+3] + "[REDACTED]" + u[at:]
			}
		}
	}
	return strings.Join(parts, ",")
}
