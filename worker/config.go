package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// DefaultLimits are Bybit's documented per-UID limits of the base tier, per
// second, keyed "endpoint/category".
func DefaultLimits() map[string]int {
	return map[string]int{
		"cancel/linear": 10, "cancel/inverse": 10, "cancel/option": 10, "cancel/spot": 20,
		"cancel-batch/linear": 10, "cancel-batch/inverse": 10, "cancel-batch/option": 10, "cancel-batch/spot": 20,
		// POST /v5/order/cancel-all: option allows one a second.
		"cancel-all/linear": 10, "cancel-all/inverse": 10, "cancel-all/option": 1, "cancel-all/spot": 20,
		// The confirmation lookups: per UID, all categories together.
		LookupRealtime: 50, LookupHistory: 50,
	}
}

// Limit keys of the confirmation lookups.
const (
	LookupRealtime = "order-realtime"
	LookupHistory  = "order-history"
)

// Account is one Bybit account the worker cancels for.
type Account struct {
	Client *bybit.Client
	// Limits override Config.Limits for this account ("endpoint/category").
	Limits map[string]int
	// LimitGroup names the Bybit UID whose budgets this account's keys
	// share: accounts with the same group share their pacers. Empty: the
	// account's own name.
	LimitGroup string
	// WSURL is the account's private WebSocket for confirmations; empty:
	// confirmations use the REST lookups only.
	WSURL string
	// Subjects are the account's own subjects (optional).
	Subjects AccountSubjects
	// DCPWindow arms Bybit's Disconnect Cancel All for the account (the
	// accounts file's dcpWindow; see Config.DCPWindow).
	DCPWindow time.Duration
}

// Config is everything the worker needs besides its connections. Defaults are
// those of the cancel-worker command; Validate fills none in.
type Config struct {
	// Stream holds requests and results (NATS_STREAM, default ORDERS).
	Stream string
	// Consumer is the durable pull consumer (NATS_CONSUMER, default
	// cancel-worker); several processes may share it.
	Consumer string
	// CancelSubject is the input (NATS_CANCEL_SUBJECT, orders.cancel).
	CancelSubject string
	// CancelAllSubject is the cancel-all input (NATS_CANCEL_ALL_SUBJECT,
	// orders.cancel-all).
	CancelAllSubject string
	// CancelAllProgressSubject prefixes the progress records of running
	// cancel-alls, one subject per request: <subject>.<requestSeq>
	// (NATS_CANCEL_ALL_PROGRESS_SUBJECT, orders.cancel-all.progress). A
	// created stream captures <subject>.>; on a stream of the operator's
	// that does not, a redelivered cancel-all cannot know what an earlier
	// delivery cancelled and says so (ordersComplete false).
	CancelAllProgressSubject string
	// AckSubject receives cancels the exchange acknowledged
	// (NATS_ACK_SUBJECT, orders.cancel.ack).
	AckSubject string
	// RejectedSubject receives every other final outcome
	// (NATS_REJECTED_SUBJECT, orders.cancel.rejected).
	RejectedSubject string
	// AckWait, MaxDeliver and MaxAckPending are applied to a consumer the
	// worker created (5s, 20, 1000). What the consumer really has is read
	// back and used.
	AckWait time.Duration
	// PinnedTTL is how long the consumers keep a replica pinned after its
	// last pull (NATS_PINNED_TTL, 5s; 0: the default): the takeover time
	// after a replica dies. It must exceed the 1 s pull interval.
	PinnedTTL     time.Duration
	MaxDeliver    int
	MaxAckPending int
	// DuplicateWindow and StreamReplicas are applied to a stream the worker
	// created (1h, 1).
	DuplicateWindow time.Duration
	StreamReplicas  int
	// StreamMaxBytes is the size limit of a stream the worker manages
	// (NATS_STREAM_MAX_BYTES); 0 is none. Such a stream discards new
	// messages when full: publishers get an error instead of old, possibly
	// unanswered requests being deleted.
	StreamMaxBytes int64

	// Concurrency bounds HTTP requests in flight (WORKER_CONCURRENCY, 16).
	Concurrency int
	// RetryBudget is how long one delivery retries transient failures
	// before it is released with NakWithDelay (2m).
	RetryBudget time.Duration
	// MaxAge is the request age (from its stream timestamp) after which it
	// is answered failed (50m). It keeps redeliveries inside the stream's
	// duplicate window.
	MaxAge time.Duration
	// ShutdownTimeout bounds how long a stop waits for requests already
	// sent (20s).
	ShutdownTimeout time.Duration

	// Limits per second keyed "endpoint/category" (BYBIT_LIMITS; default
	// DefaultLimits). A missing key or 0 is unlimited. A budget starts at
	// its figure and then follows the X-Bapi-Limit of Bybit's answers, up
	// as well as down (linear and inverse share one budget).
	Limits map[string]int
	// LimitCeilings are the explicit limits (the entries of BYBIT_LIMITS):
	// a budget never paces above its ceiling, whatever Bybit reports. An
	// Account's Limits are its ceilings too.
	LimitCeilings map[string]int
	// LimitShare is the fraction of each budget this process may use when
	// several replicas share an account (BYBIT_LIMIT_SHARE, 1).
	LimitShare float64
	// Batch sends waiting cancels of one category through cancel-batch
	// alongside single cancels, spending both budgets (BYBIT_BATCH, true).
	Batch bool
	// IPLimit is the process's ceiling on all requests to Bybit
	// (BYBIT_IP_LIMIT, 500/5s).
	IPLimit Rate
	// BanPause is how long every request stops after an IP-ban 403 (10m).
	BanPause time.Duration
	// BanRelease releases held messages with NakWithDelay during a ban, for
	// fleets spread over several IPs (false): what the replica holds and
	// what reaches it during the pause, back to the consumer after one
	// second (banReleaseDelay), for another replica to take.
	BanRelease bool

	// Accounts are the Bybit accounts besides the default one (the client
	// passed to New), by the name a request's account field uses.
	Accounts map[string]Account
	// WSURL is the default account's private WebSocket (BYBIT_WS_URL, the
	// BYBIT_ENV preset); empty: REST lookups only.
	WSURL string
	// DCPWindow arms Bybit's Disconnect Cancel All for the default account
	// (BYBIT_DCP_WINDOW; 0: off, else whole seconds from 3s to 300s): at
	// start the window is set for every product and read back, and every
	// private stream subscribes the dcp topics. Bybit cancels every order
	// of the account once all of them have been gone for the window. It
	// needs Confirm (the streams are the confirmations').
	DCPWindow time.Duration

	// Confirm follows every acknowledged cancel (and every ambiguous
	// not_open) to the order's final state (CONFIRM, true).
	Confirm bool
	// ConfirmedSubject receives one confirmation per order
	// (NATS_CONFIRMED_SUBJECT, orders.cancel.confirmed).
	ConfirmedSubject string
	// ConfirmTimeout is how long a confirmation waits for the private
	// stream before it asks the REST lookups (CONFIRM_TIMEOUT, 5s).
	ConfirmTimeout time.Duration

	// SyncCancelSubject and SyncCancelAllSubject are the subjects of the
	// sync service's endpoints cancel and cancel-all
	// (NATS_SYNC_CANCEL_SUBJECT, orders.sync.cancel;
	// NATS_SYNC_CANCEL_ALL_SUBJECT, orders.sync.cancel-all): outside
	// orders.cancel.> so that a stream or a permission on that does not
	// capture them. Both empty: no sync service.
	SyncCancelSubject    string
	SyncCancelAllSubject string
	// SyncMaxTimeout caps a sync request's Cancel-Timeout header
	// (SYNC_MAX_TIMEOUT, 30s); 0: no cap.
	SyncMaxTimeout time.Duration

	Logger *slog.Logger
	// Registerer receives the worker's Prometheus metrics; nil keeps them in
	// a private registry.
	Registerer prometheus.Registerer
	// Now is the clock of everything compared with a time: request ages
	// (MaxAge), the pacers' windows, ban pauses, rate-limit resets, the
	// times a result names. Durations the worker reports (rate-limit waits,
	// request latencies) are measured on the monotonic clock instead, so
	// that a stepped wall clock (or a test's) cannot make them negative.
	// Default time.Now.
	Now func() time.Time
}

// DefaultConfig is the configuration of `cancel-worker run` with no setting
// given (Logger aside): the one source of the defaults the command's help
// shows, the demo and the benchmark start from and the tests adjust.
func DefaultConfig() Config {
	return Config{
		Stream:                   "ORDERS",
		Consumer:                 "cancel-worker",
		CancelSubject:            "orders.cancel",
		CancelAllSubject:         "orders.cancel-all",
		CancelAllProgressSubject: "orders.cancel-all.progress",
		AckSubject:               "orders.cancel.ack",
		RejectedSubject:          "orders.cancel.rejected",
		AckWait:                  5 * time.Second,
		PinnedTTL:                5 * time.Second,
		MaxDeliver:               20,
		MaxAckPending:            1000,
		DuplicateWindow:          time.Hour,
		StreamReplicas:           1,
		StreamMaxBytes:           4 << 30,
		Concurrency:              16,
		RetryBudget:              2 * time.Minute,
		MaxAge:                   50 * time.Minute,
		ShutdownTimeout:          20 * time.Second,
		Limits:                   DefaultLimits(),
		LimitShare:               1,
		Batch:                    true,
		IPLimit:                  Rate{N: 500, Per: 5 * time.Second},
		BanPause:                 10 * time.Minute,
		Confirm:                  true,
		ConfirmedSubject:         "orders.cancel.confirmed",
		ConfirmTimeout:           5 * time.Second,
		SyncCancelSubject:        "orders.sync.cancel",
		SyncCancelAllSubject:     "orders.sync.cancel-all",
		SyncMaxTimeout:           30 * time.Second,
	}
}

// Validate checks the configuration; errors name the setting. New calls it;
// a command can call it before connecting to anything.
func (c Config) Validate() error {
	v := &validation{}
	c.validateSubjects(v)
	v.positive(c.AckWait, "NATS_ACK_WAIT")
	v.positive(c.DuplicateWindow, "NATS_DUPLICATE_WINDOW")
	v.positive(c.RetryBudget, "WORKER_RETRY_BUDGET")
	v.positive(c.MaxAge, "WORKER_MAX_AGE")
	v.positive(c.ShutdownTimeout, "WORKER_SHUTDOWN_TIMEOUT")
	v.positive(c.BanPause, "BYBIT_BAN_PAUSE")
	v.check(c.MaxDeliver >= 1 || c.MaxDeliver == -1, "NATS_MAX_DELIVER must be at least 1 (or -1 for unlimited), not %d", c.MaxDeliver)
	v.check(c.PinnedTTL == 0 || c.PinnedTTL >= 3*pullInterval,
		"NATS_PINNED_TTL must be at least %v (above the 1 s pull interval and the replica's lease), not %v", 3*pullInterval, c.PinnedTTL)
	v.check(c.MaxAckPending >= 1, "NATS_MAX_ACK_PENDING must be at least 1, not %d", c.MaxAckPending)
	v.check(c.StreamReplicas >= 1 && c.StreamReplicas <= 5, "NATS_STREAM_REPLICAS must be 1 to 5, not %d", c.StreamReplicas)
	v.check(c.LimitShare >= 0 && c.LimitShare <= 1, "BYBIT_LIMIT_SHARE must be in (0, 1], not %v", c.LimitShare)
	v.check(c.Concurrency >= 1, "WORKER_CONCURRENCY must be at least 1, not %d", c.Concurrency)
	v.errs = append(v.errs, checkDCPWindow(c.DCPWindow, c.Confirm, c.WSURL, "BYBIT_DCP_WINDOW")...)
	for name, a := range c.Accounts {
		v.check(name != "" && name != DefaultAccount, "BYBIT_ACCOUNTS_FILE: account name %q is reserved", name)
		v.errs = append(v.errs, checkDCPWindow(a.DCPWindow, c.Confirm, a.WSURL, "BYBIT_ACCOUNTS_FILE: account "+name+": dcpWindow")...)
		v.check(a.Client != nil, "BYBIT_ACCOUNTS_FILE: account %q has no client", name)
	}
	v.errs = append(v.errs, c.checkAccountSubjects()...)
	v.check(c.SyncMaxTimeout >= 0, "SYNC_MAX_TIMEOUT must not be negative, not %v", c.SyncMaxTimeout)
	if c.Confirm {
		v.positive(c.ConfirmTimeout, "CONFIRM_TIMEOUT")
	}
	if c.DuplicateWindow > 0 && c.MaxAge > 0 {
		v.add(checkDupeWindow(c.DuplicateWindow, c.MaxAge, "NATS_DUPLICATE_WINDOW"))
	}
	return errors.Join(v.errs...)
}

// validateSubjects checks that every subject is set and differs from the
// others.
func (c Config) validateSubjects(v *validation) {
	v.need(c.Stream, "NATS_STREAM")
	v.need(c.Consumer, "NATS_CONSUMER")
	v.need(c.CancelSubject, "NATS_CANCEL_SUBJECT")
	v.need(c.CancelAllSubject, "NATS_CANCEL_ALL_SUBJECT")
	v.need(c.AckSubject, "NATS_ACK_SUBJECT")
	v.need(c.RejectedSubject, "NATS_REJECTED_SUBJECT")
	v.need(c.CancelAllProgressSubject, "NATS_CANCEL_ALL_PROGRESS_SUBJECT")
	v.add(c.checkProgressSubject())
	subjects := map[string]string{}
	for _, s := range c.namedSubjects() {
		if s[1] == "NATS_CONFIRMED_SUBJECT" {
			continue // checked below
		}
		if prev, dup := subjects[s[0]]; dup && s[0] != "" {
			v.add(fmt.Errorf("%s and %s are both %q: every subject must differ", prev, s[1], s[0]))
		}
		subjects[s[0]] = s[1]
	}
	if !c.Confirm {
		return
	}
	v.need(c.ConfirmedSubject, "NATS_CONFIRMED_SUBJECT")
	for _, s := range c.namedSubjects() {
		v.check(s[0] != c.ConfirmedSubject || s[0] == "" || s[1] == "NATS_CONFIRMED_SUBJECT",
			"%s and NATS_CONFIRMED_SUBJECT are both %q: every subject must differ", s[1], s[0])
	}
}

// validation collects what Validate finds.
type validation struct{ errs []error }

func (v *validation) add(err error) {
	if err != nil {
		v.errs = append(v.errs, err)
	}
}

func (v *validation) check(ok bool, format string, args ...any) {
	if !ok {
		v.errs = append(v.errs, fmt.Errorf(format, args...))
	}
}

func (v *validation) need(s, name string) { v.check(s != "", "%s must not be empty", name) }

func (v *validation) positive(d time.Duration, name string) {
	v.check(d > 0, "%s must be positive, not %v", name, d)
}
