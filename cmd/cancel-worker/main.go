// Command cancel-worker takes order-cancel requests from NATS JetStream, sends
// each as a signed Bybit v5 cancel within the rate limits, and publishes one
// result per request.
//
//	cancel-worker [run]        the worker, configured by environment variables or flags
//	cancel-worker demo         a self-contained scenario: embedded NATS, simulated Bybit, the worker
//	cancel-worker sim          the simulated exchange alone, for a local stack
//	cancel-worker bench        a burst drained against the simulated exchange, measured
//	cancel-worker replay       requests joined with their results from the stream; resend what was left undone
//	cancel-worker cancel       one cancel through the sync service, its result printed
//	cancel-worker cancel-all   one cancel-all through the sync service, its result printed
//	cancel-worker flatten      every open order of an account cancelled; exit 0 only when nothing is left
//	cancel-worker healthcheck  asks a running worker's /readyz; exit 0 when ready
//	cancel-worker version      the version, commit and build date
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
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
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

// command is one subcommand: its name, the line the top-level help gives it,
// what its own --help starts with, and how it runs.
type command struct {
	name, summary, about string
	run                  func(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error
}

// commands are listed by the top-level help in this order. (Set in init:
// their run functions read the list back for their help.)
var commands []command

func init() { commands = commandList() }

func commandList() []command {
	return []command{
		{name: "run", summary: "the worker (the default command), configured by environment variables or flags",
			about: "Run the worker: take cancel requests from NATS JetStream, send each to Bybit within the rate limits, publish one result per request.",
			run: func(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
				return withSettingNames(runWorker(ctx, args, env, stdout, stderr))
			}},
		{name: "demo", summary: "a scripted scenario against an embedded nats-server and a simulated Bybit",
			about: "Run a scripted scenario: an embedded nats-server, a simulated Bybit exchange and the worker; print every result and confirmation, exit 0 when each is as expected.",
			run:   runDemo},
		{name: "sim", summary: "the simulated Bybit exchange alone (for a local stack)",
			about: "Serve the simulated Bybit exchange (REST and the private WebSocket) for a local stack; every cancel of an unknown order succeeds once.",
			run: func(ctx context.Context, args []string, _ lookupEnv, _, stderr io.Writer) error {
				return runSim(ctx, args, stderr)
			}},
		{name: "bench", summary: "drain a burst against the simulated exchange and report drain time against the ideal",
			about: "Publish a burst of cancels to an embedded nats-server, drain it through the worker against the simulated exchange, and report the drain time against what the rate limits allow.",
			run:   runBench},
		{name: "replay", summary: "read requests and results back from the stream for incident review; --resend finishes what was left undone",
			about: "Read the requests of a window back from the stream with their results and confirmations, for incident review; with --resend, republish what was left unanswered or failed.",
			run: func(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
				return runReplay(ctx, args, env, os.Stdin, stdout, stderr)
			}},
		{name: "cancel", summary: "cancel one order through the sync service and wait for its result (exit 0 cancelled, 2 not_open, 3 rejected/invalid/failed, 4 timeout, 5 filled)",
			about: "Cancel one order through the worker's sync service (orders.sync.cancel) and print its stored result; with --wait-confirmation, also the order's confirmation. Exit 0 cancelled, 2 not_open, 3 rejected, invalid or failed, 4 timeout (the request's sequence printed), 5 filled before the cancel landed, 1 any other error.",
			run:   cancelCommand(false)},
		{name: "cancel-all", summary: "cancel a category's orders (by symbol, base or settle coin) through the sync service and wait for the result",
			about: "Cancel every order of a category (narrowed by symbol, base coin or settle coin) through the worker's sync service (orders.sync.cancel-all) and print its stored result. Exit codes as for cancel.",
			run:   cancelCommand(true)},
		{name: "flatten", summary: "cancel every open order of an account (--account), in every category; exit 0 only when nothing is left",
			about: "Flatten an account: one request ({\"scope\":\"account\"}) through the sync service's cancel-all endpoint that cancels every open order of every kind in every category, looking again until nothing is left; print what was cancelled per category and what is left. Exit 0 only when complete, 3 when not, 4 on a timeout.",
			run:   runFlatten},
		{name: "healthcheck", summary: "ask a running worker's /readyz (HTTP_ADDR); exit 0 when ready, 1 otherwise",
			about: "Ask the /readyz of the worker at HTTP_ADDR (on this host when its host part is empty or a wildcard): exit 0 when it answers ready, 1 with the reason otherwise. For a Docker HEALTHCHECK or a Kubernetes exec probe.",
			run:   runHealthcheck},
		{name: "version", summary: "print the version, commit and build date",
			about: "Print the version, the commit and the build date of this binary (also: cancel-worker --version).",
			run: func(_ context.Context, args []string, _ lookupEnv, stdout, stderr io.Writer) error {
				return runVersion(args, stdout, stderr)
			}},
	}
}

func findCommand(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// commandAbout is the description a command's --help starts with.
func commandAbout(name string) string {
	c, _ := findCommand(name)
	return c.about
}

func writeUsage(w io.Writer) {
	fmt.Fprint(w, "Usage: cancel-worker <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "  help         this text; 'cancel-worker help <command>' is that command's help\n\n")
	fmt.Fprint(w, "With no command, or flags first, cancel-worker runs the worker ('run').\n")
	fmt.Fprint(w, "Run 'cancel-worker <command> --help' for what a command does and its flags; --version prints the version.\n")
}

// run dispatches to a subcommand. It reads the environment only through env.
// Help that was asked for goes to stdout; errors go to stderr.
func run(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "--h":
			writeUsage(stdout)
			return nil
		case "-version", "--version":
			return runVersion(args[1:], stdout, stderr)
		case "help":
			if len(args) == 1 {
				writeUsage(stdout)
				return nil
			}
			if _, ok := findCommand(args[1]); !ok {
				writeUsage(stderr)
				return fmt.Errorf("help: unknown command %q", args[1])
			}
			args = []string{args[1], "--help"}
		}
	}
	name := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	c, ok := findCommand(name)
	if !ok {
		writeUsage(stderr)
		return fmt.Errorf("unknown command %q", name)
	}
	if wantsHelp(args) {
		stderr = stdout
	}
	return c.run(ctx, args, env, stdout, stderr)
}

func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: durationStrings}))
	}
	return slog.New(tint.NewHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly + ".000", NoColor: !isTerminal(w)}))
}

// durationStrings writes every time.Duration of a JSON log line as a Go
// duration string ("29.173µs", "20s"), as the text format does, instead of
// slog's bare nanoseconds.
func durationStrings(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func runWorker(ctx context.Context, args []string, env lookupEnv, _, stderr io.Writer) error {
	v, err := parseCommand("run", "", settings, args, env, stderr, nil)
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
	build := readBuildInfo()
	log.Info("cancel-worker", build.logAttrs()...)
	log.Info("configuration", v.effective(env)...)
	rc.worker.Logger = log

	nc, err := connectNATS(rc.nats, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	client, err := workerClients(&rc)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	build.register(reg)
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

// workerClients makes the Bybit client of the default account (nil when
// there is none) and sets the other accounts of BYBIT_ACCOUNTS_FILE in
// rc.worker.Accounts.
func workerClients(rc *runConfig) (*bybit.Client, error) {
	var client *bybit.Client
	if rc.apiKey != "" {
		var err error
		client, err = accountCreds{apiKey: rc.apiKey, secret: rc.apiSecret, rsaKey: rc.rsaKey, baseURL: rc.baseURL}.client(*rc)
		if err != nil {
			return nil, err
		}
	}
	for name, a := range rc.accounts {
		c, err := a.client(*rc)
		if err != nil {
			return nil, fmt.Errorf("BYBIT_ACCOUNTS_FILE: account %q: %w", name, err)
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
	return client, nil
}

// serveHTTP serves /metrics, /healthz (the process is alive) and /readyz (200
// when the worker can process requests, with what runs degraded if anything;
// 503 with the reason otherwise).
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
		fmt.Fprintln(w, why) // "ready", or "ready; " and what runs degraded
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

// connectCommand connects one of the commands that talk to a running worker
// (cancel, cancel-all, flatten, replay): the NATS secrets read from env, the
// connection named cancel-worker-<command> unless NATS_NAME names it, and only
// warnings of the client logged.
func connectCommand(c natsConfig, env lookupEnv, command string, stderr io.Writer) (*nats.Conn, error) {
	if err := c.readSecrets(env); err != nil {
		return nil, err
	}
	if c.name == "" {
		c.name = "cancel-worker-" + command
	}
	return connectNATS(c, newLogger(stderr, slog.LevelWarn, "text"))
}

// connectCommandStream is connectCommand with JetStream on the connection,
// for the commands that read or write the stream (flatten, replay).
func connectCommandStream(c natsConfig, env lookupEnv, command string, stderr io.Writer) (*nats.Conn, jetstream.JetStream, error) {
	return withJetStream(connectCommand(c, env, command, stderr))
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
		if err := checkCredsFile(c.creds); err != nil {
			return nil, err
		}
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

// checkCredsFile reads NATS_CREDS before connecting, so that a missing or
// malformed file is reported as such (nats.go reports it as a connect error).
// The seed is never quoted.
func checkCredsFile(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("NATS_CREDS: cannot read %s: %v", path, errors.Unwrap(err))
	}
	if tok, err := jwt.ParseDecoratedJWT(raw); err != nil || !strings.HasPrefix(tok, "ey") {
		return fmt.Errorf("NATS_CREDS: %s holds no user JWT (want the .creds file of nsc or the NATS operator)", path)
	}
	kp, err := nkeys.ParseDecoratedNKey(raw)
	if err != nil {
		return fmt.Errorf("NATS_CREDS: %s holds no user nkey seed (want the .creds file of nsc or the NATS operator)", path)
	}
	kp.Wipe()
	return nil
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
