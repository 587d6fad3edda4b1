package main

import (
	"crypto/rsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// setting is one configuration value: an environment variable and, unless it
// is a secret, its flag twin. Flags win over the environment, which wins over
// the default. --help shows defaults, never values from the environment.
type setting struct {
	env string
	// field is the worker.Config field the setting fills, by its Go name:
	// a worker.ConfigError about it is told with env.
	field  string
	def    string
	usage  string
	secret bool
	// emptyAllowed: an empty value is a choice (HTTP_ADDR= disables), not
	// "unset".
	emptyAllowed bool
}

// lookupEnv is os.LookupEnv, or a map in tests: it tells an empty variable
// from a missing one.
type lookupEnv func(string) (string, bool)

func (l lookupEnv) get(name string) string {
	v, _ := l(name)
	return v
}

func (s setting) flagName() string {
	return strings.ReplaceAll(strings.ToLower(s.env), "_", "-")
}

// defaults are the worker's own (worker.DefaultConfig): the settings that
// configure it take their defaults from there.
var defaults = worker.DefaultConfig()

// durationText writes a default duration the way an operator would: 1h, 50m,
// 5s.
func durationText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// bytesText writes a default size as byteSize reads it: 4GiB, 512MiB, off.
func bytesText(n int64) string {
	switch {
	case n <= 0:
		return "off"
	case n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "GiB"
	case n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	}
	return strconv.FormatInt(n, 10)
}

// settings is the configuration contract of `cancel-worker run`.
var settings = []setting{
	{env: "NATS_URL", def: "nats://127.0.0.1:4222", usage: "NATS servers, comma-separated"},
	{env: "NATS_CONTEXT", def: "", usage: "nats CLI context (a name under ~/.config/nats/context, or a .json file) supplying the NATS_* connection settings not set otherwise"},
	{env: "NATS_CREDS", def: "", usage: "NATS .creds file (user JWT and nkey seed)"},
	{env: "NATS_NKEY", def: "", usage: "NATS nkey seed file"},
	{env: "NATS_USER", def: "", usage: "NATS user (with NATS_PASSWORD or NATS_PASSWORD_FILE)"},
	{env: "NATS_PASSWORD", secret: true, usage: "NATS password (environment only)"},
	{env: "NATS_PASSWORD_FILE", secret: true, usage: "file holding the NATS password (environment only)"},
	{env: "NATS_TOKEN", secret: true, usage: "NATS token (environment only)"},
	{env: "NATS_TOKEN_FILE", secret: true, usage: "file holding the NATS token (environment only)"},
	{env: "NATS_CA", def: "", usage: "CA certificate file that signs the NATS servers' certificates"},
	{env: "NATS_CERT", def: "", usage: "client certificate file for NATS TLS (with NATS_KEY)"},
	{env: "NATS_KEY", def: "", usage: "client key file for NATS TLS (with NATS_CERT)"},
	{env: "NATS_CONNECTION_NAME", def: "", usage: "connection name shown by the server (default cancel-worker@<hostname>)"},
	{env: "NATS_STREAM", field: "Stream", def: defaults.Stream, usage: "stream holding the cancel subject and the results"},
	{env: "NATS_CONSUMER", field: "Consumer", def: defaults.Consumer, usage: "durable pull consumer; several worker processes may share it"},
	{env: "NATS_CANCEL_SUBJECT", field: "CancelSubject", def: defaults.CancelSubject, usage: "input subject"},
	{env: "NATS_CANCEL_ALL_SUBJECT", field: "CancelAllSubject", def: defaults.CancelAllSubject, usage: "input subject of cancel-all requests"},
	{env: "NATS_ACK_SUBJECT", field: "AckSubject", def: defaults.AckSubject, usage: "results: cancels the exchange acknowledged"},
	{env: "NATS_REJECTED_SUBJECT", field: "RejectedSubject", def: defaults.RejectedSubject, usage: "results: every other final outcome"},
	{env: "NATS_CANCEL_ALL_PROGRESS_SUBJECT", field: "CancelAllProgressSubject", def: defaults.CancelAllProgressSubject, usage: "progress records of running cancel-alls, on <subject>.<request sequence>"},
	{env: "NATS_ACK_WAIT", field: "AckWait", def: durationText(defaults.AckWait), usage: "AckWait of a consumer the worker creates"},
	{env: "NATS_PINNED_TTL", field: "PinnedTTL", def: durationText(defaults.PinnedTTL), usage: "how long a consumer the worker creates keeps a replica pinned after its last pull: the takeover time after a replica dies (at least 3s)"},
	{env: "NATS_MAX_DELIVER", field: "MaxDeliver", def: strconv.Itoa(defaults.MaxDeliver), usage: "MaxDeliver of a consumer the worker creates"},
	{env: "NATS_MAX_ACK_PENDING", field: "MaxAckPending", def: strconv.Itoa(defaults.MaxAckPending), usage: "MaxAckPending of a consumer the worker creates (messages held)"},
	{env: "NATS_DUPLICATE_WINDOW", field: "DuplicateWindow", def: durationText(defaults.DuplicateWindow), usage: "duplicate window of a stream the worker creates"},
	{env: "NATS_STREAM_REPLICAS", field: "StreamReplicas", def: strconv.Itoa(defaults.StreamReplicas), usage: "replicas of a stream the worker creates"},
	{env: "NATS_STREAM_MAX_BYTES", field: "StreamMaxBytes", def: bytesText(defaults.StreamMaxBytes), usage: "size limit of a stream the worker creates (e.g. 512MiB, 10GB), or off; when full, new messages are refused (discard new)"},
	{env: "BYBIT_API_KEY", def: "", usage: "Bybit API key (HMAC)"},
	{env: "BYBIT_API_SECRET", secret: true, usage: "Bybit API secret (environment only)"},
	{env: "BYBIT_API_SECRET_FILE", secret: true, usage: "file holding the Bybit API secret (environment only)"},
	{env: "BYBIT_RSA_PRIVATE_KEY_FILE", secret: true, usage: "PEM file (PKCS#1 or PKCS#8) of a self-generated RSA key registered with Bybit, instead of a secret (environment only)"},
	{env: "BYBIT_ACCOUNTS_FILE", field: "Accounts", def: "", usage: "JSON or YAML file of named accounts (key, secret or secret file or RSA key file, base URL, limits, limit group) that requests pick with their account field"},
	{env: "BYBIT_ENV", def: "testnet", usage: "host preset: testnet, mainnet, demo, or a regional site (mainnet-tr, mainnet-kz, mainnet-ge, mainnet-id, mainnet-jp; REST only: mainnet-nl, mainnet-ae)"},
	{env: "BYBIT_BASE_URL", def: "", usage: "overrides the BYBIT_ENV host (tests, the simulator)"},
	{env: "BYBIT_WS_URL", field: "WSURL", def: "", usage: "private WebSocket for confirmations; default: the preset's (BYBIT_ENV, or a BYBIT_BASE_URL that is a preset's host), ws://<host>/v5/private for an http:// BYBIT_BASE_URL; required for any other host"},
	{env: "BYBIT_DCP_WINDOW", field: "DCPWindow", def: "", emptyAllowed: true, usage: "arm Bybit's Disconnect Cancel All (dead-man switch) for the default account with this window (3s to 300s, needs CONFIRM=true): Bybit cancels every order of the account once every replica's private stream has been gone that long; empty: off"},
	{env: "BYBIT_RECV_WINDOW", def: "5s", usage: "X-BAPI-RECV-WINDOW"},
	{env: "BYBIT_HTTP_TIMEOUT", def: "10s", usage: "timeout of one HTTP request to Bybit"},
	{env: "BYBIT_IP_LIMIT", field: "IPLimit", def: defaults.IPLimit.String(), usage: "ceiling on all requests of the process to Bybit (N/duration), or off"},
	{env: "BYBIT_LIMITS", field: "Limits", def: "", usage: "per-second ceilings on the limits learned from Bybit's X-Bapi-Limit (which start at the documented base tier), e.g. cancel/linear=20,cancel-batch/linear=20"},
	{env: "BYBIT_LIMIT_SHARE", field: "LimitShare", def: strconv.FormatFloat(defaults.LimitShare, 'g', -1, 64), usage: "fraction of each rate-limit budget this process may use, when several replicas share an account"},
	{env: "BYBIT_BATCH", field: "Batch", def: strconv.FormatBool(defaults.Batch), usage: "also send waiting cancels through cancel-batch, spending both budgets"},
	{env: "BYBIT_BAN_PAUSE", field: "BanPause", def: durationText(defaults.BanPause), usage: "how long every request stops after an IP-ban 403"},
	{env: "BYBIT_BAN_RELEASE", field: "BanRelease", def: strconv.FormatBool(defaults.BanRelease), usage: "release held messages to other replicas during an IP ban"},
	{env: "CONFIRM", field: "Confirm", def: strconv.FormatBool(defaults.Confirm), usage: "follow every acknowledged cancel to the order's final state (private WebSocket, then REST)"},
	{env: "CONFIRM_TIMEOUT", field: "ConfirmTimeout", def: durationText(defaults.ConfirmTimeout), usage: "how long a confirmation waits for the private WebSocket before asking REST"},
	{env: "NATS_CONFIRMED_SUBJECT", field: "ConfirmedSubject", def: defaults.ConfirmedSubject, usage: "confirmations: one message per order of an acknowledged cancel"},
	{env: "NATS_SYNC_CANCEL_SUBJECT", field: "SyncCancelSubject", def: defaults.SyncCancelSubject, usage: "subject of the sync service's cancel endpoint (request/reply: the reply is the stored result); empty disables it", emptyAllowed: true},
	{env: "NATS_SYNC_CANCEL_ALL_SUBJECT", field: "SyncCancelAllSubject", def: defaults.SyncCancelAllSubject, usage: "subject of the sync service's cancel-all endpoint; empty disables it", emptyAllowed: true},
	{env: "SYNC_MAX_TIMEOUT", field: "SyncMaxTimeout", def: durationText(defaults.SyncMaxTimeout), usage: "cap on a sync request's Cancel-Timeout header (default wait 4s)"},
	{env: "WORKER_CONCURRENCY", field: "Concurrency", def: strconv.Itoa(defaults.Concurrency), usage: "HTTP requests in flight"},
	{env: "WORKER_RETRY_BUDGET", field: "RetryBudget", def: durationText(defaults.RetryBudget), usage: "in-process retrying of transient failures per delivery"},
	{env: "WORKER_MAX_AGE", field: "MaxAge", def: durationText(defaults.MaxAge), usage: "request age after which it is answered failed"},
	{env: "WORKER_SHUTDOWN_TIMEOUT", field: "ShutdownTimeout", def: durationText(defaults.ShutdownTimeout), usage: "how long a stop waits for requests already sent"},
	{env: "HTTP_ADDR", def: ":9478", usage: "address of /metrics, /healthz and /readyz; empty disables", emptyAllowed: true},
	{env: "LOG_LEVEL", def: "info", usage: "debug, info, warn or error"},
	{env: "LOG_FORMAT", def: "text", usage: "text (colour on a terminal) or json"},
}

// settingOf maps a worker.Config field to the setting that fills it.
var settingOf = func() map[string]string {
	out := map[string]string{}
	for _, s := range settings {
		if s.field != "" {
			out[s.field] = s.env
		}
	}
	return out
}()

// settingName is how an operator knows a field of worker.Config: its
// environment variable, or for an account's field the account and key of
// BYBIT_ACCOUNTS_FILE.
func settingName(f worker.Field) string {
	if f.Account == "" {
		if env, ok := settingOf[f.Name]; ok {
			return env
		}
		return f.Name
	}
	if f.Name == "" {
		return fmt.Sprintf("BYBIT_ACCOUNTS_FILE: account %q", f.Account)
	}
	_, goName, _ := strings.Cut(f.Name, ".") // Subjects.CancelSubject: the file has it flat
	if goName == "" {
		goName = f.Name
	}
	key := f.Name
	if sf, ok := reflect.TypeFor[accountEntry]().FieldByName(goName); ok {
		key = sf.Tag.Get("yaml")
	}
	if f.Name == "DCPWindow" {
		return fmt.Sprintf("BYBIT_ACCOUNTS_FILE: account %s: %s", f.Account, key)
	}
	return fmt.Sprintf("BYBIT_ACCOUNTS_FILE: account %q %s", f.Account, key)
}

// namedError is an error whose worker.ConfigError is told with the
// settings' names.
type namedError struct {
	err  error
	text string
}

func (e *namedError) Error() string { return e.text }
func (e *namedError) Unwrap() error { return e.err }

// withSettingNames tells the worker.ConfigError in err, if any, with the
// settings' names instead of worker.Config's.
func withSettingNames(err error) error {
	var ce *worker.ConfigError
	if !errors.As(err, &ce) {
		return err
	}
	return &namedError{err: err, text: strings.Replace(err.Error(), ce.Error(), ce.Text(settingName), 1)}
}

// replaySettings are the settings `cancel-worker replay` reads: how to reach
// NATS and where the worker keeps its messages.
var replaySettings = slices.DeleteFunc(slices.Clone(settings), func(s setting) bool {
	switch s.env {
	case "NATS_ACK_WAIT", "NATS_PINNED_TTL", "NATS_MAX_DELIVER", "NATS_MAX_ACK_PENDING", "NATS_DUPLICATE_WINDOW", "NATS_STREAM_REPLICAS", "NATS_STREAM_MAX_BYTES",
		"NATS_CANCEL_ALL_PROGRESS_SUBJECT", "NATS_SYNC_CANCEL_SUBJECT", "NATS_SYNC_CANCEL_ALL_SUBJECT": // replay reads requests and results only
		return true
	}
	return !strings.HasPrefix(s.env, "NATS_")
})

// values is the resolved configuration: env name -> value.
type values map[string]string

// isBool: a setting whose default is true or false is an on/off switch,
// with a boolean flag twin (--confirm, --confirm=false).
func (s setting) isBool() bool { return s.def == "true" || s.def == "false" }

// parseSettings resolves every setting from flags, the environment, the
// NATS context (NATS_CONTEXT, for the NATS_* settings) and the defaults. It
// returns flag.ErrHelp after printing the help for -h/--help; about is what
// the help says the command does. extra registers the command's own flags.
func parseSettings(name string, list []setting, args []string, env lookupEnv, out io.Writer, extra func(*flag.FlagSet)) (values, error) {
	return parseCommand(name, "", list, args, env, out, extra)
}

func parseCommand(name, about string, list []setting, args []string, env lookupEnv, out io.Writer, extra func(*flag.FlagSet)) (values, error) {
	if about == "" {
		about = commandAbout(name)
	}
	fs := newFlagSet(name, about, out)
	flags := map[string]*string{}
	for _, s := range list {
		if s.secret {
			continue
		}
		val := s.def
		flags[s.env] = &val
		usage := fmt.Sprintf("%s (env %s)", s.usage, s.env)
		fs.Var(settingFlag{value: &val, boolean: s.isBool()}, s.flagName(), usage)
	}
	if extra != nil {
		extra(fs.FlagSet)
	}
	fs.preamble = func(w io.Writer) {
		fmt.Fprintln(w, "A flag marked (env NAME) has that environment variable as its twin; flags win over the environment.")
		first := true
		for _, s := range list {
			if s.secret {
				if first {
					fmt.Fprintln(w, "Secrets are read only from the environment:")
					first = false
				}
				fmt.Fprintf(w, "  %-26s %s\n", s.env, s.usage)
			}
		}
	}
	if err := fs.parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	v := values{}
	defaulted := map[string]bool{}
	for _, s := range list {
		switch {
		case !s.secret && set[s.flagName()]:
			v[s.env] = *flags[s.env]
		case env.get(s.env) != "":
			v[s.env] = env.get(s.env)
		case s.emptyAllowed:
			if val, set := env(s.env); set {
				v[s.env] = val
				continue
			}
			v[s.env] = s.def
			defaulted[s.env] = true
		default:
			v[s.env] = s.def
			defaulted[s.env] = true
		}
	}
	if ctxName := v["NATS_CONTEXT"]; ctxName != "" {
		nctx, err := loadNATSContext(ctxName, env)
		if err != nil {
			return nil, err
		}
		nctx.fill(v, defaulted)
	}
	return v, nil
}

// parser collects typed values; the first error names its variable.
type parser struct {
	v   values
	err error
}

func (p *parser) fail(name, format string, args ...any) {
	if p.err == nil {
		p.err = fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...))
	}
}

func (p *parser) str(name string) string { return p.v[name] }

func (p *parser) duration(name string) time.Duration {
	d, err := time.ParseDuration(p.v[name])
	if err != nil {
		p.fail(name, "%q is not a Go duration such as 5s or 10m", p.v[name])
		return 0
	}
	if d <= 0 {
		p.fail(name, "must be positive, not %s", p.v[name])
	}
	return d
}

func (p *parser) integer(name string) int {
	n, err := strconv.Atoi(p.v[name])
	if err != nil {
		p.fail(name, "%q is not a whole number", p.v[name])
	}
	return n
}

func (p *parser) boolean(name string) bool {
	b, err := strconv.ParseBool(p.v[name])
	if err != nil {
		p.fail(name, "%q is not true or false", p.v[name])
	}
	return b
}

func (p *parser) fraction(name string) float64 {
	f, err := strconv.ParseFloat(p.v[name], 64)
	if err != nil || f <= 0 || f > 1 {
		p.fail(name, "%q is not a fraction in (0, 1]", p.v[name])
	}
	return f
}

// rate parses "N/duration" or "off".
func (p *parser) rate(name string) worker.Rate {
	s := p.v[name]
	if s == "off" || s == "" {
		return worker.Rate{}
	}
	n, per, ok := strings.Cut(s, "/")
	count, err := strconv.Atoi(n)
	if !ok || err != nil || count <= 0 {
		p.fail(name, "%q is not N/duration (e.g. 500/5s) or off", s)
		return worker.Rate{}
	}
	d, err := time.ParseDuration(per)
	if err != nil || d <= 0 {
		p.fail(name, "%q is not N/duration (e.g. 500/5s) or off", s)
		return worker.Rate{}
	}
	return worker.Rate{N: count, Per: d}
}

// limits parses "endpoint/category=N,..." over Bybit's documented limits.
func (p *parser) limits(name string) map[string]int {
	out := worker.DefaultLimits()
	s := strings.TrimSpace(p.v[name])
	if s == "" {
		return out
	}
	for _, part := range strings.Split(s, ",") {
		k, n, ok := strings.Cut(strings.TrimSpace(part), "=")
		count, err := strconv.Atoi(n)
		if _, known := out[k]; !ok || err != nil || count < 0 || !known {
			keys := make([]string, 0, len(out))
			for key := range out {
				keys = append(keys, key)
			}
			sort.Strings(keys)
			p.fail(name, "%q is not endpoint/category=N with a key among %s", part, strings.Join(keys, ", "))
			return out
		}
		out[k] = count
	}
	return out
}

// explicitLimits are the entries an operator set in "endpoint/category=N,..."
// (limits reports a malformed one): ceilings the limits learned from Bybit
// never exceed.
func (p *parser) explicitLimits(name string) map[string]int {
	out := map[string]int{}
	for _, part := range strings.Split(p.v[name], ",") {
		k, n, ok := strings.Cut(strings.TrimSpace(part), "=")
		if count, err := strconv.Atoi(n); ok && err == nil && count >= 0 {
			out[k] = count
		}
	}
	return out
}

// wsURLOf is the private WebSocket of a base URL: a preset's, or the same
// host's for a local http:// URL (the simulator serves both); "" when it
// cannot be known.
func wsURLOf(baseURL string) string {
	u, _ := bybit.PrivateStreamFor(baseURL)
	return u
}

// wsURLMissing is the error for a private stream that must be set.
func wsURLMissing(setting string, err error) string {
	return fmt.Sprintf("must be set: %v; set %s to the private stream of your account's site (wss://…/v5/private), or CONFIRM=false", err, setting)
}

// secret reads NAME or NAME_FILE (not both). Its value never appears in an
// error.
func readSecret(env lookupEnv, name string) (bybit.Secret, error) {
	direct, file := env.get(name), env.get(name+"_FILE")
	switch {
	case direct != "" && file != "":
		return "", fmt.Errorf("%s and %s_FILE are both set: set one", name, name)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s_FILE: cannot read %s: %v", name, file, errors.Unwrap(err))
		}
		s := strings.TrimRight(string(b), "\r\n")
		if s == "" {
			return "", fmt.Errorf("%s_FILE: %s is empty", name, file)
		}
		return bybit.Secret(s), nil
	}
	return bybit.Secret(direct), nil
}

// natsConfig is how to connect to NATS.
type natsConfig struct {
	url      string
	name     string
	creds    string
	nkey     string
	user     string
	password bybit.Secret
	token    bybit.Secret
	ca       string
	cert     string
	key      string
}

// readSecrets reads the NATS password and token and checks that the
// authentication settings make sense together.
func (n *natsConfig) readSecrets(env lookupEnv) error {
	var err error
	fromContext := *n
	if n.password, err = readSecret(env, "NATS_PASSWORD"); err != nil {
		return err
	}
	if n.token, err = readSecret(env, "NATS_TOKEN"); err != nil {
		return err
	}
	// NATS_CONTEXT's password and token, when the environment gives none.
	if n.password.IsZero() {
		n.password = fromContext.password
	}
	if n.token.IsZero() {
		n.token = fromContext.token
	}
	switch {
	case n.user != "" && n.password.IsZero():
		return errors.New("NATS_PASSWORD: must be set (or NATS_PASSWORD_FILE) with NATS_USER")
	case n.user == "" && !n.password.IsZero():
		return errors.New("NATS_USER: must be set with NATS_PASSWORD")
	case (n.cert == "") != (n.key == ""):
		return errors.New("NATS_CERT: NATS_CERT and NATS_KEY go together")
	case n.creds != "" && n.nkey != "":
		return errors.New("NATS_NKEY: set NATS_CREDS or NATS_NKEY, not both")
	}
	return nil
}

// natsConfig reads the connection settings. password and token are those
// resolved with NATS_CONTEXT; readSecrets reads the environment's over them.
func (p *parser) natsConfig() natsConfig {
	return natsConfig{
		url: p.str("NATS_URL"), name: p.str("NATS_CONNECTION_NAME"), creds: p.str("NATS_CREDS"), nkey: p.str("NATS_NKEY"),
		user: p.str("NATS_USER"), ca: p.str("NATS_CA"), cert: p.str("NATS_CERT"), key: p.str("NATS_KEY"),
		password: bybit.Secret(p.str("NATS_PASSWORD")), token: bybit.Secret(p.str("NATS_TOKEN")),
	}
}

// subjects reads the settings that fill messages.Subjects (the stream, the
// consumer and the subjects), by their field in the settings table; one a
// command does not read is empty.
func (p *parser) subjects() messages.Subjects {
	var out messages.Subjects
	fields := reflect.ValueOf(&out).Elem()
	for _, s := range settings {
		if f := fields.FieldByName(s.field); s.field != "" && f.IsValid() {
			f.SetString(p.str(s.env))
		}
	}
	return out
}

// streamName checks a stream or consumer name as the server would (it
// answers a bad one with "invalid stream name" and no setting named).
func (p *parser) streamName(name string) string {
	s := p.v[name]
	if s == "" || strings.ContainsAny(s, ". *>/\\\t\r\n") {
		p.fail(name, "%q is not a valid JetStream name: it must be non-empty, without '.', '*', '>', '/', '\\' or white space", s)
	}
	return s
}

// byteSize parses 4GiB, 512MB, 1048576 or off (0: no limit).
func (p *parser) byteSize(name string) int64 {
	s := strings.TrimSpace(p.v[name])
	if s == "off" || s == "" {
		return 0
	}
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		p.fail(name, "%q is not a size such as 4GiB, 512MB or 1048576 (bytes), or off", p.v[name])
		return 0
	}
	return n * mult
}

// runConfig is everything `run` needs.
type runConfig struct {
	nats      natsConfig
	worker    worker.Config
	apiKey    string
	apiSecret bybit.Secret
	rsaKey    *rsa.PrivateKey
	baseURL   string
	// accounts are those of BYBIT_ACCOUNTS_FILE; "default" among them is
	// the default account when BYBIT_API_KEY is not set.
	accounts   map[string]accountCreds
	recvWindow time.Duration
	timeout    time.Duration
	logLevel   slog.Level
	logFormat  string
	httpAddr   string
}

// buildRunConfig reads the settings of `run` in the order they are
// reported: the first malformed one is the error.
func buildRunConfig(v values, env lookupEnv) (runConfig, error) {
	p := &parser{v: v}
	var rc runConfig
	rc.nats = p.natsConfig()
	rc.worker = p.workerConfig()
	rc.apiKey = p.str("BYBIT_API_KEY")
	rc.recvWindow = p.duration("BYBIT_RECV_WINDOW")
	rc.timeout = p.duration("BYBIT_HTTP_TIMEOUT")
	rc.baseURL = p.baseURL()
	rc.worker.DCPWindow = p.dcpWindow("BYBIT_DCP_WINDOW")
	rc.worker.WSURL = p.wsURL(rc.baseURL, rc.worker.Confirm)
	p.logging(&rc)
	if p.err != nil {
		return rc, p.err
	}
	if err := rc.nats.readSecrets(env); err != nil {
		return rc, err
	}
	accountsFile := p.str("BYBIT_ACCOUNTS_FILE")
	envCreds, err := rc.readCredentials(env, accountsFile != "")
	if err != nil {
		return rc, err
	}
	if accountsFile != "" {
		accts, err := readAccountsFile(accountsFile, rc.baseURL, rc.worker.WSURL, rc.worker.Confirm)
		if err != nil {
			return rc, err
		}
		if _, ok := accts[worker.DefaultAccount]; ok && envCreds {
			return rc, errors.New("BYBIT_ACCOUNTS_FILE: account \"default\" is also given by BYBIT_API_KEY: keep one")
		}
		rc.accounts = accts
	}
	return rc, nil
}

// workerConfig reads the settings of worker.Config but the Bybit URLs and
// the dead-man switch.
func (p *parser) workerConfig() worker.Config {
	p.streamName("NATS_STREAM")
	p.streamName("NATS_CONSUMER")
	return worker.Config{
		Subjects:        p.subjects(),
		AckWait:         p.duration("NATS_ACK_WAIT"),
		PinnedTTL:       p.duration("NATS_PINNED_TTL"),
		MaxDeliver:      p.integer("NATS_MAX_DELIVER"),
		MaxAckPending:   p.integer("NATS_MAX_ACK_PENDING"),
		DuplicateWindow: p.duration("NATS_DUPLICATE_WINDOW"),
		StreamReplicas:  p.integer("NATS_STREAM_REPLICAS"),
		StreamMaxBytes:  p.byteSize("NATS_STREAM_MAX_BYTES"),
		Concurrency:     p.integer("WORKER_CONCURRENCY"),
		RetryBudget:     p.duration("WORKER_RETRY_BUDGET"),
		MaxAge:          p.duration("WORKER_MAX_AGE"),
		ShutdownTimeout: p.duration("WORKER_SHUTDOWN_TIMEOUT"),
		Limits:          p.limits("BYBIT_LIMITS"),
		LimitCeilings:   p.explicitLimits("BYBIT_LIMITS"),
		IPLimit:         p.rate("BYBIT_IP_LIMIT"),
		LimitShare:      p.fraction("BYBIT_LIMIT_SHARE"),
		Batch:           p.boolean("BYBIT_BATCH"),
		BanPause:        p.duration("BYBIT_BAN_PAUSE"),
		BanRelease:      p.boolean("BYBIT_BAN_RELEASE"),
		Confirm:         p.boolean("CONFIRM"),
		ConfirmTimeout:  p.duration("CONFIRM_TIMEOUT"),
		SyncMaxTimeout:  p.duration("SYNC_MAX_TIMEOUT"),
	}
}

// baseURL is BYBIT_BASE_URL, or the BYBIT_ENV preset's.
func (p *parser) baseURL() string {
	u := p.str("BYBIT_BASE_URL")
	if u == "" {
		preset, err := bybit.BaseURLFor(p.str("BYBIT_ENV"))
		if err != nil {
			p.fail("BYBIT_ENV", "%q is not one of %s", p.str("BYBIT_ENV"), bybit.EnvironmentNames())
		}
		return preset
	}
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		p.fail("BYBIT_BASE_URL", "%q must start with http:// or https://", u)
	}
	return u
}

// dcpWindow reads an optional duration (empty: 0, off).
func (p *parser) dcpWindow(name string) time.Duration {
	v := p.str(name)
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.fail(name, "%q is not a Go duration such as 30s", v)
	}
	return d
}

// wsURL is BYBIT_WS_URL, or the private stream of baseURL: the preset's
// documented stream, or the same host's for a local http:// BYBIT_BASE_URL;
// anything else cannot be guessed, which is an error with confirmations on.
func (p *parser) wsURL(baseURL string, confirm bool) string {
	ws := p.str("BYBIT_WS_URL")
	if ws != "" {
		if !strings.HasPrefix(ws, "ws://") && !strings.HasPrefix(ws, "wss://") {
			p.fail("BYBIT_WS_URL", "%q must start with ws:// or wss://", ws)
		}
		return ws
	}
	ws, err := bybit.PrivateStreamFor(baseURL)
	if err != nil && confirm {
		p.fail("BYBIT_WS_URL", "%s", wsURLMissing("BYBIT_WS_URL", err))
	}
	return ws
}

// logging reads LOG_LEVEL, LOG_FORMAT and HTTP_ADDR.
func (p *parser) logging(rc *runConfig) {
	if err := rc.logLevel.UnmarshalText([]byte(p.str("LOG_LEVEL"))); err != nil {
		p.fail("LOG_LEVEL", "%q is not debug, info, warn or error", p.str("LOG_LEVEL"))
	}
	rc.httpAddr = p.str("HTTP_ADDR")
	rc.logFormat = p.str("LOG_FORMAT")
	if rc.logFormat != "text" && rc.logFormat != "json" {
		p.fail("LOG_FORMAT", "%q is not text or json", rc.logFormat)
	}
}

// readCredentials reads the default account's secret or RSA key and checks
// them with BYBIT_API_KEY and whether there is an accounts file; envCreds:
// the environment gives the default account.
func (rc *runConfig) readCredentials(env lookupEnv, accountsFile bool) (envCreds bool, err error) {
	if rc.apiSecret, err = readSecret(env, "BYBIT_API_SECRET"); err != nil {
		return false, err
	}
	if file := env.get("BYBIT_RSA_PRIVATE_KEY_FILE"); file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return false, fmt.Errorf("BYBIT_RSA_PRIVATE_KEY_FILE: cannot read %s: %v", file, errors.Unwrap(err))
		}
		if rc.rsaKey, err = bybit.ParseRSAPrivateKey(b); err != nil {
			return false, fmt.Errorf("BYBIT_RSA_PRIVATE_KEY_FILE: %s: %v", file, err)
		}
	}
	secret := rc.apiSecret
	envCreds = rc.apiKey != "" || !secret.IsZero() || rc.rsaKey != nil
	switch {
	case !secret.IsZero() && rc.rsaKey != nil:
		return envCreds, errors.New("BYBIT_RSA_PRIVATE_KEY_FILE: set either an HMAC secret (BYBIT_API_SECRET or BYBIT_API_SECRET_FILE) or an RSA key, not both")
	case !envCreds && !accountsFile:
		return envCreds, errors.New("BYBIT_API_KEY: no Bybit credentials: set BYBIT_API_KEY and BYBIT_API_SECRET (or BYBIT_API_SECRET_FILE, or BYBIT_RSA_PRIVATE_KEY_FILE), or BYBIT_ACCOUNTS_FILE")
	case !envCreds:
	case rc.apiKey == "":
		return envCreds, errors.New("BYBIT_API_KEY: must be set with the secret or RSA key")
	case secret.IsZero() && rc.rsaKey == nil:
		return envCreds, errors.New("BYBIT_API_SECRET: must be set (or BYBIT_API_SECRET_FILE, or BYBIT_RSA_PRIVATE_KEY_FILE) with BYBIT_API_KEY")
	}
	return envCreds, nil
}

// effective lists the resolved settings for the start-up log, secrets masked.
func (v values) effective(env lookupEnv) []any {
	var attrs []any
	for _, s := range settings {
		val := v[s.env]
		if s.env == "NATS_URL" {
			val = redactURLs(val)
		}
		if s.secret {
			val = "unset"
			if env.get(s.env) != "" || v[s.env] != "" { // v: also from NATS_CONTEXT
				val = "set"
			}
		}
		attrs = append(attrs, s.env, val)
	}
	return attrs
}
