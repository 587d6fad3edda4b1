// Command cancel-worker takes order-cancel requests from NATS JetStream, sends
// each as a signed Bybit v5 cancel within the rate limits, and publishes one
// result per request.
//
//	cancel-worker [run]   the worker, configured by environment variables or flags
//	cancel-worker demo    a self-contained scenario: embedded NATS, simulated Bybit, the worker
//	cancel-worker sim     the simulated exchange alone, for a local stack
//	cancel-worker bench   a burst drained against the simulated exchange, measured
//	cancel-worker replay  requests joined with their results from the stream; resend what was left undone
//	cancel-worker cancel, cancel-all  one cancel through the sync service, its result printed
//	cancel-worker flatten cancel every open order of an account; exit 0 only when nothing is left
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
		os.Exit(exitCode(err))
	}
}

const usage = `Usage: cancel-worker [command] [flags]

Commands:
  run     the worker (the default), configured by environment variables or flags
  demo    a scripted scenario against an embedded nats-server and a simulated Bybit
  sim     the simulated Bybit exchange alone (for a local stack)
  bench   drain a burst against the simulated exchange and report drain time against the ideal
  replay  read requests and results back from the stream for incident review; --resend finishes what was left undone
  cancel      cancel one order through the sync service and wait for its result (exit 0 cancelled, 2 not_open, 3 rejected/invalid/failed, 4 timeout, 5 filled)
  cancel-all  cancel a category's orders (by symbol, base or settle coin) through the sync service and wait for the result
  flatten cancel every open order of an account (--account), in every category; exit 0 only when nothing is left

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
	case "bench":
		return runBench(ctx, args, stdout, stderr)
	case "replay":
		return runReplay(ctx, args, env, os.Stdin, stdout, stderr)
	case "cancel", "cancel-all":
		return runCancel(ctx, cmd == "cancel-all", args, env, stdout, stderr)
	case "flatten":
		return runFlatten(ctx, args, env, stdout, stderr)
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
	v, err := parseSettings("run", settings, args, env, stderr, nil)
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

	nc, err := connectNATS(rc.nats, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	var client *bybit.Client
	if rc.apiKey != "" {
		client, err = accountCreds{apiKey: rc.apiKey, secret: rc.apiSecret, rsaKey: rc.rsaKey, baseURL: rc.baseURL}.client(rc)
		if err != nil {
			return err
		}
	}
	for name, a := range rc.accounts {
		c, err := a.client(rc)
		if err != nil {
			return fmt.Errorf("BYBIT_ACCOUNTS_FILE: account %q: %w", name, err)
		}
		if name == worker.DefaultAccount {
			client, rc.worker.WSURL = c, a.wsURL
			if a.dcpWindow != 0 {
				rc.worker.DCPWindow = a.dcpWindow
			}
			continue
		}
		if rc.worker.Accounts == nil {
			rc.worker.Accounts = map[string]worker.Account{}
		}
		rc.worker.Accounts[name] = worker.Account{Client: c, Limits: a.limits, LimitGroup: a.limitGroup, WSURL: a.wsURL, Subjects: a.subjects, DCPWindow: a.dcpWindow}
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
	var svc syncService
	if rc.httpAddr != "" {
		stopHTTP, err := serveHTTP(rc.httpAddr, reg, svc.ready(w.Ready), log)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}
	stopSvc, err := svc.start(ctx, nc, js, w, rc.worker, reg, log)
	if err != nil {
		return err
	}
	defer stopSvc()
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
		ok, why := ready()
		if !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, why)
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
// reconnect once. A connection refused at start for bad credentials or an
// untrusted certificate is an error that says which, without the secret.
func connectNATS(c natsConfig, log *slog.Logger) (*nats.Conn, error) {
	name := c.name
	if name == "" {
		host, _ := os.Hostname()
		name = "cancel-worker@" + host
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close
				log.Warn("NATS disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("NATS reconnected", "server", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("NATS error", "error", err)
		}),
	}
	if c.creds != "" {
		opts = append(opts, nats.UserCredentials(c.creds))
	}
	if c.nkey != "" {
		opt, err := nats.NkeyOptionFromSeed(c.nkey)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY: %s is not an nkey seed file: %v", c.nkey, errors.Unwrap(err))
		}
		opts = append(opts, opt)
	}
	if c.user != "" {
		opts = append(opts, nats.UserInfo(c.user, c.password.Reveal()))
	}
	if !c.token.IsZero() {
		opts = append(opts, nats.Token(c.token.Reveal()))
	}
	if c.ca != "" {
		opts = append(opts, nats.RootCAs(c.ca))
	}
	if c.cert != "" {
		opts = append(opts, nats.ClientCert(c.cert, c.key))
	}
	nc, err := nats.Connect(c.url, opts...)
	if err != nil {
		return nil, natsConnectError(c, err)
	}
	return nc, nil
}

// natsConnectError says which setting to look at.
func natsConnectError(c natsConfig, err error) error {
	where := redactURLs(c.url)
	var unknownCA x509.UnknownAuthorityError
	var invalidCert x509.CertificateInvalidError
	var hostErr x509.HostnameError
	var opErr *net.OpError
	// crypto/tls reports the server's TLS alerts (e.g. "certificate
	// required") as a net.OpError with Op "remote error".
	remoteTLS := errors.As(err, &opErr) && opErr.Op == "remote error"
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		var which string
		switch {
		case c.creds != "":
			which = "NATS_CREDS"
		case c.nkey != "":
			which = "NATS_NKEY"
		case c.user != "":
			which = "NATS_USER/NATS_PASSWORD"
		case !c.token.IsZero():
			which = "NATS_TOKEN"
		default:
			which = "no credentials were given (NATS_USER, NATS_TOKEN, NATS_CREDS or NATS_NKEY)"
		}
		return fmt.Errorf("NATS_URL: %s refused the credentials (authorization violation): check %s", where, which)
	case errors.As(err, &unknownCA), errors.As(err, &invalidCert), errors.As(err, &hostErr):
		return fmt.Errorf("NATS_CA: the certificate of %s is not trusted: %v", where, err)
	case remoteTLS, errors.Is(err, nats.ErrTLS), errors.As(err, new(*tls.CertificateVerificationError)),
		errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted):
		return fmt.Errorf("NATS_CA: TLS with %s failed (check NATS_CA, NATS_CERT and NATS_KEY): %v", where, err)
	}
	return fmt.Errorf("NATS_URL: connect to %s: %w", where, err)
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
