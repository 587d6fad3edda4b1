package worker

import (
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
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
	// Subjects are the stream, the consumer and the subjects (NATS_STREAM,
	// NATS_CONSUMER, NATS_*_SUBJECT). A created stream captures
	// CancelAllProgressSubject.>; on a stream of the operator's that does
	// not, a redelivered cancel-all cannot know what an earlier delivery
	// cancelled and says so (ordersComplete false). The sync subjects are
	// outside orders.cancel.> so that a stream or a permission on that does
	// not capture them; both empty: no sync service.
	messages.Subjects
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
	// second (handOverDelay), for another replica to take.
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
	// ConfirmTimeout is how long a confirmation waits for the private
	// stream before it asks the REST lookups (CONFIRM_TIMEOUT, 5s).
	ConfirmTimeout time.Duration

	// SyncMaxTimeout caps a sync request's Cancel-Timeout header
	// (SYNC_MAX_TIMEOUT, 30s); 0: no cap.
	SyncMaxTimeout time.Duration

	Logger *slog.Logger
	// Registerer receives the worker's Prometheus metrics; nil keeps them in
	// a private registry.
	Registerer prometheus.Registerer
	// now is the worker's one clock, time.Now unless an internal test sets
	// it: request ages (MaxAge), the pacers' windows, ban pauses, rate-limit
	// resets, the times a result names, the heartbeats against AckWait and
	// the durations it reports all read it. Not a setting: the NATS
	// server's AckWait and Bybit's windows run on real time, and time.Now's
	// readings carry the monotonic clock, so a stepped wall clock moves no
	// duration, lease or heartbeat.
	now func() time.Time
}

// DefaultConfig is the configuration of `cancel-worker run` with no setting
// given (Logger aside): the one source of the defaults the command's help
// shows, the demo and the benchmark start from and the tests adjust.
func DefaultConfig() Config {
	return Config{
		Subjects: messages.Subjects{
			Stream:                   "ORDERS",
			Consumer:                 "cancel-worker",
			CancelSubject:            "orders.cancel",
			CancelAllSubject:         "orders.cancel-all",
			CancelAllProgressSubject: "orders.cancel-all.progress",
			AckSubject:               "orders.cancel.ack",
			RejectedSubject:          "orders.cancel.rejected",
			ConfirmedSubject:         "orders.cancel.confirmed",
			SyncCancelSubject:        "orders.sync.cancel",
			SyncCancelAllSubject:     "orders.sync.cancel-all",
		},
		AckWait:         5 * time.Second,
		PinnedTTL:       5 * time.Second,
		MaxDeliver:      20,
		MaxAckPending:   1000,
		DuplicateWindow: time.Hour,
		StreamReplicas:  1,
		StreamMaxBytes:  4 << 30,
		Concurrency:     16,
		RetryBudget:     2 * time.Minute,
		MaxAge:          50 * time.Minute,
		ShutdownTimeout: 20 * time.Second,
		Limits:          DefaultLimits(),
		LimitShare:      1,
		Batch:           true,
		IPLimit:         Rate{N: 500, Per: 5 * time.Second},
		BanPause:        10 * time.Minute,
		Confirm:         true,
		ConfirmTimeout:  5 * time.Second,
		SyncMaxTimeout:  30 * time.Second,
	}
}

// Validate checks the configuration. Its error is a *ConfigError naming
// the fields as Go spells them (a command renders it with its own names).
// New calls it; a command can call it before connecting to anything.
func (c Config) Validate() error {
	v := &validation{c: c}
	c.validateSubjects(v)
	v.positive("AckWait", "DuplicateWindow", "RetryBudget", "MaxAge", "ShutdownTimeout", "BanPause")
	v.check(c.MaxDeliver >= 1 || c.MaxDeliver == -1, field("MaxDeliver"), "%s must be at least 1 (or -1 for unlimited), not %d", field("MaxDeliver"), c.MaxDeliver)
	v.check(c.PinnedTTL == 0 || c.PinnedTTL >= 3*pullInterval, field("PinnedTTL"),
		"%s must be at least %v (above the 1 s pull interval and the replica's lease), not %v", field("PinnedTTL"), 3*pullInterval, c.PinnedTTL)
	v.check(c.MaxAckPending >= 1, field("MaxAckPending"), "%s must be at least 1, not %d", field("MaxAckPending"), c.MaxAckPending)
	v.check(c.StreamReplicas >= 1 && c.StreamReplicas <= 5, field("StreamReplicas"), "%s must be 1 to 5, not %d", field("StreamReplicas"), c.StreamReplicas)
	v.check(c.LimitShare >= 0 && c.LimitShare <= 1, field("LimitShare"), "%s must be in (0, 1], not %v", field("LimitShare"), c.LimitShare)
	v.check(c.Concurrency >= 1, field("Concurrency"), "%s must be at least 1, not %d", field("Concurrency"), c.Concurrency)
	v.add(checkDCPWindow(c.DCPWindow, c.Confirm, c.WSURL, field("DCPWindow"))...)
	for _, name := range slices.Sorted(maps.Keys(c.Accounts)) {
		a := c.Accounts[name]
		if name == "" || name == DefaultAccount {
			v.add(problem(field("Accounts"), "%s: account name %q is reserved", field("Accounts"), name))
		}
		v.add(checkDCPWindow(a.DCPWindow, c.Confirm, a.WSURL, accountField(name, "DCPWindow"))...)
		v.check(a.Client != nil, accountField(name, ""), "%s has no client", accountField(name, ""))
	}
	v.add(c.checkAccountSubjects()...)
	v.check(c.SyncMaxTimeout >= 0, field("SyncMaxTimeout"), "%s must not be negative, not %v", field("SyncMaxTimeout"), c.SyncMaxTimeout)
	if c.Confirm {
		v.positive("ConfirmTimeout")
	}
	if c.DuplicateWindow > 0 && c.MaxAge > 0 {
		if p, bad := checkDupeWindow(field("DuplicateWindow"), field("DuplicateWindow"), c.DuplicateWindow, c.MaxAge); bad {
			v.add(p)
		}
	}
	return v.err()
}

// validateSubjects checks that every subject is set and differs from the
// others.
func (c Config) validateSubjects(v *validation) {
	v.nonEmpty("Stream", "Consumer", "CancelSubject", "CancelAllSubject", "AckSubject", "RejectedSubject", "CancelAllProgressSubject")
	if p, bad := c.checkProgressSubject(); bad {
		v.add(p)
	}
	confirmed := field("ConfirmedSubject")
	subjects := map[string]Field{}
	for _, s := range c.namedSubjects() {
		if s.field == confirmed {
			continue // checked below
		}
		if prev, dup := subjects[s.subject]; dup && s.subject != "" {
			v.add(problem(s.field, "%s and %s are both %q: every subject must differ", prev, s.field, s.subject))
		}
		subjects[s.subject] = s.field
	}
	if !c.Confirm {
		return
	}
	v.nonEmpty("ConfirmedSubject")
	for _, s := range c.namedSubjects() {
		v.check(s.subject != c.ConfirmedSubject || s.subject == "" || s.field == confirmed, confirmed,
			"%s and %s are both %q: every subject must differ", s.field, confirmed, s.subject)
	}
}

// dupeMargin is how much longer than MaxAge the duplicate window must be.
const dupeMargin = 5 * time.Minute

// checkDupeWindow: a duplicate window (named by what) must outlast MaxAge
// by dupeMargin; the problem is f's.
func checkDupeWindow(f Field, what any, window, maxAge time.Duration) (FieldProblem, bool) {
	if window < maxAge+dupeMargin {
		return problem(f, "%s (%v) must be at least %s (%v) + %v, or a redelivered request could get a second result",
			what, window, field("MaxAge"), maxAge, dupeMargin), true
	}
	return FieldProblem{}, false
}

// pullInterval is the longest a pull request waits (less with a short lease:
// see pin.pullWait); every pull renews the pin.
const pullInterval = time.Second
