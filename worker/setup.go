package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Metadata tag on streams and consumers the worker created: those it keeps up
// to date; any other belongs to the operator and is only read.
const (
	ManagedKey   = "bybit-cancel-worker.managed"
	ManagedValue = "true"
)

// StreamMaxAge is the history a created stream keeps for replay.
const StreamMaxAge = 7 * 24 * time.Hour

func (c Config) inputSubjects() []string {
	return append([]string{c.CancelSubject, c.CancelAllSubject}, c.accountInputSubjects()...)
}
func (c Config) resultSubjects() []string { return []string{c.AckSubject, c.RejectedSubject} }
func (c Config) streamSubjects() []string {
	subjects := append(c.inputSubjects(), c.resultSubjects()...)
	if c.Confirm {
		subjects = append(subjects, c.ConfirmedSubject)
	}
	if c.CancelAllProgressSubject != "" {
		subjects = append(subjects, c.progressSubjects())
	}
	return subjects
}

// optionalSubject is a subject a stream of the operator's may lack: the
// worker then runs without what needs it, and says which subject to add, at
// start and on its readiness detail (Worker.Ready).
type optionalSubject struct {
	// name says what the subject is; probe is a literal subject the stream
	// must capture; add is what to add to the stream's subjects.
	name, probe, add string
	// without is what is off (or degraded) while the stream lacks it.
	without string
}

// optionalSubjects are the subjects beyond the cancel and result subjects.
func (c Config) optionalSubjects() []optionalSubject {
	o := []optionalSubject{
		{name: "the cancel-all subject", probe: c.CancelAllSubject, add: c.CancelAllSubject,
			without: "cancel-all requests are off (no stream stores them: a JetStream publish fails with no responders, a core NATS publish is lost)"},
		{name: "the cancel-all progress subject", probe: c.progressSubject(1), add: c.progressSubjects(),
			without: "a cancel-all redelivered after it partly ran cannot list what the earlier delivery cancelled, and its result says ordersComplete false"},
	}
	if c.Confirm {
		o = append(o, optionalSubject{name: "the confirmed subject", probe: c.ConfirmedSubject, add: c.ConfirmedSubject,
			without: "confirmations are off (CONFIRM=true, but there is nowhere to store them)"})
	}
	return o
}

func (c Config) isOptional(subj string) bool {
	return slices.ContainsFunc(c.optionalSubjects(), func(o optionalSubject) bool { return o.add == subj })
}

// missingOptional lists the optional subjects a stream does not capture (the
// progress records only when it captures cancel-alls at all).
func (c Config) missingOptional(streamSubjects []string) []optionalSubject {
	var missing []optionalSubject
	cancelAll := false // the stream captures some cancel-all subject
	for subj, r := range c.routes() {
		cancelAll = cancelAll || (r.all && subjectCovered(streamSubjects, subj))
	}
	for _, o := range c.optionalSubjects() {
		if subjectCovered(streamSubjects, o.probe) || (o.add == c.progressSubjects() && !cancelAll) {
			continue
		}
		missing = append(missing, o)
	}
	return missing
}

// capturedInputs are the input subjects the stream captures: the consumer
// filters those (the cancel subject always; EnsureStream requires it).
func (c Config) capturedInputs(streamSubjects []string) []string {
	var inputs []string
	for _, subj := range c.inputSubjects() {
		if subj == c.CancelSubject || subjectCovered(streamSubjects, subj) {
			inputs = append(inputs, subj)
		}
	}
	return inputs
}

// progressSubjects is the wildcard of every cancel-all's progress records.
func (c Config) progressSubjects() string { return c.CancelAllProgressSubject + ".>" }

// progressSubject is where the progress records of the cancel-all at seq go.
func (c Config) progressSubject(seq uint64) string {
	return c.CancelAllProgressSubject + "." + strconv.FormatUint(seq, 10)
}

// ConfirmConsumer is the name of the durable consumer that drives
// confirmations.
// streamMaxBytes is the MaxBytes of a stream the worker manages: -1 (no
// limit) when StreamMaxBytes is 0. A full stream refuses new messages
// (DiscardNew): a publisher is told its cancel was not stored, where
// DiscardOld would silently delete the oldest requests, answered or not.
func (c Config) streamMaxBytes() int64 {
	if c.StreamMaxBytes <= 0 {
		return -1
	}
	return c.StreamMaxBytes
}

func (c Config) ConfirmConsumer() string { return c.Consumer + "-confirm" }

// EnsureStream creates the stream if it is missing (Config.Validate has
// checked its duplicate window), brings a stream the
// worker created up to date, and checks an operator's stream without changing
// it. It returns the stream's effective configuration.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c Config) (jetstream.StreamConfig, error) {
	s, err := js.Stream(ctx, c.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        c.Stream,
			Description: "Bybit cancel requests and their results (bybit-cancel-worker)",
			Subjects:    c.streamSubjects(),
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      StreamMaxAge,
			Duplicates:  c.DuplicateWindow,
			Replicas:    c.StreamReplicas,
			MaxBytes:    c.streamMaxBytes(),
			Discard:     jetstream.DiscardNew,
			Metadata:    map[string]string{ManagedKey: ManagedValue},
		})
		if err != nil {
			return jetstream.StreamConfig{}, fmt.Errorf("create stream %s: %w", c.Stream, err)
		}
		return s.CachedInfo().Config, nil
	case err != nil:
		return jetstream.StreamConfig{}, fmt.Errorf("look up stream %s: %w", c.Stream, err)
	}

	cfg := s.CachedInfo().Config
	if cfg.Metadata[ManagedKey] != ManagedValue {
		return cfg, c.checkOperatorStream(cfg)
	}
	return c.updateStream(ctx, js, cfg)
}

// checkOperatorStream checks a stream the worker did not create, without
// changing it.
func (c Config) checkOperatorStream(cfg jetstream.StreamConfig) error {
	var missing []string
	for _, subj := range c.streamSubjects() {
		// The cancel-all, progress and confirmed subjects are optional
		// on a stream of the operator's: without one, what needs it is
		// off (Worker.Setup says so).
		if !c.isOptional(subj) && !subjectCovered(cfg.Subjects, subj) {
			missing = append(missing, subj)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("stream %s (not created by the worker, so left unchanged) does not capture %s: add them to its subjects, e.g. nats stream edit %s --subjects %s",
			c.Stream, strings.Join(missing, ", "), c.Stream, strings.Join(append(slices.Clone(cfg.Subjects), missing...), ","))
	}
	if cfg.Retention == jetstream.WorkQueuePolicy {
		return fmt.Errorf("stream %s has work-queue retention: results and replay need limits retention", c.Stream)
	}
	if p, bad := checkDupeWindow(field("MaxAge"), "the duplicate window of stream "+c.Stream, cfg.Duplicates, c.MaxAge); bad {
		return &ConfigError{Problems: []FieldProblem{p}}
	}
	return nil
}

// updateStream brings a stream the worker created up to date.
func (c Config) updateStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.StreamConfig, error) {
	want := cfg
	for _, subj := range c.streamSubjects() {
		if !slices.Contains(want.Subjects, subj) {
			want.Subjects = append(want.Subjects, subj)
		}
	}
	want.Duplicates = c.DuplicateWindow
	want.Replicas = c.StreamReplicas
	want.MaxBytes = c.streamMaxBytes()
	want.Discard = jetstream.DiscardNew
	if slices.Equal(want.Subjects, cfg.Subjects) && want.Duplicates == cfg.Duplicates && want.Replicas == cfg.Replicas &&
		want.MaxBytes == cfg.MaxBytes && want.Discard == cfg.Discard {
		return cfg, nil
	}
	s, err := js.UpdateStream(ctx, want)
	if err != nil {
		return cfg, fmt.Errorf("update stream %s: %w", c.Stream, err)
	}
	return s.CachedInfo().Config, nil
}

// subjectCovered reports whether a stream with the given subjects captures
// subj (a literal subject), honouring * and > wildcards.
func subjectCovered(streamSubjects []string, subj string) bool {
	for _, pat := range streamSubjects {
		if subjectMatches(pat, subj) {
			return true
		}
	}
	return false
}

func subjectMatches(pattern, subj string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subj, ".")
	for i, pt := range p {
		if pt == ">" {
			return len(s) > i
		}
		if i >= len(s) || (pt != "*" && pt != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

// ConsumerSettings are what the worker reads back from its consumer: the
// heartbeats, the last-delivery rule and the fleet's lease follow what is
// really set.
type ConsumerSettings struct {
	AckWait    time.Duration
	MaxDeliver int
	// PinnedTTL is the consumer's, when it pins replicas (zero otherwise).
	PinnedTTL time.Duration
}

// EnsureConsumer creates the durable consumer if it is missing, updates one the
// worker created, and checks an operator's one without changing it. It
// filters the input subjects the stream captures.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, c Config) (jetstream.Consumer, ConsumerSettings, error) {
	s, err := js.Stream(ctx, c.Stream)
	if err != nil {
		return nil, ConsumerSettings{}, fmt.Errorf("look up stream %s: %w", c.Stream, err)
	}
	inputs := c.capturedInputs(s.CachedInfo().Config.Subjects)
	cons, err := js.Consumer(ctx, c.Stream, c.Consumer)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case err != nil:
		return nil, ConsumerSettings{}, fmt.Errorf("look up consumer %s: %w", c.Consumer, err)
	default:
		cfg := cons.CachedInfo().Config
		if cfg.Metadata[ManagedKey] != ManagedValue {
			if err := checkOperatorConsumer(cfg, c, inputs); err != nil {
				return nil, ConsumerSettings{}, err
			}
			return cons, settingsOf(cfg), nil
		}
	}
	want := jetstream.ConsumerConfig{
		Durable:        c.Consumer,
		Description:    "bybit-cancel-worker",
		FilterSubjects: inputs,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        c.AckWait,
		MaxDeliver:     c.MaxDeliver,
		MaxAckPending:  c.MaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		Metadata:       map[string]string{ManagedKey: ManagedValue},
	}
	want = pinnedConfig(want, c.pinnedTTL())
	cons, err = js.CreateOrUpdateConsumer(ctx, c.Stream, want)
	if err != nil {
		return nil, ConsumerSettings{}, fmt.Errorf("create or update consumer %s: %w", c.Consumer, err)
	}
	return cons, settingsOf(cons.CachedInfo().Config), nil
}

func settingsOf(cfg jetstream.ConsumerConfig) ConsumerSettings {
	s := ConsumerSettings{AckWait: cfg.AckWait, MaxDeliver: cfg.MaxDeliver}
	if s.AckWait <= 0 {
		s.AckWait = 30 * time.Second // the server's default
	}
	if isPinned(cfg) {
		s.PinnedTTL = cfg.PinnedTTL
		if s.PinnedTTL <= 0 {
			s.PinnedTTL = serverPinnedTTL
		}
	}
	return s
}

// pinnedTTL is the PinnedTTL the worker gives the consumers it creates
// (NATS_PINNED_TTL).
func (c Config) pinnedTTL() time.Duration {
	if c.PinnedTTL <= 0 {
		return DefaultPinnedTTL
	}
	return c.PinnedTTL
}

// serverPinnedTTL is the PinnedTTL nats-server gives a pinned consumer
// created without one.
const serverPinnedTTL = 2 * time.Minute

// checkPinnedTTL refuses an operator's pinned consumer whose PinnedTTL
// leaves no lease (under 3 s) and warns when it is far above
// NATS_PINNED_TTL: the takeover after a kill -9 follows the consumer's.
func checkPinnedTTL(cfg jetstream.ConsumerConfig, c Config, name string) error {
	if !isPinned(cfg) {
		return nil
	}
	ttl := settingsOf(cfg).PinnedTTL
	if ttl < 3*pullInterval {
		return fmt.Errorf("consumer %s (not created by the worker, so left unchanged) has PinnedTTL %v; it must be at least %v (above the 1 s pull interval and the replica's lease)",
			name, ttl, 3*pullInterval)
	}
	if ttl > 2*c.pinnedTTL() && c.Logger != nil {
		c.Logger.Warn("the consumer's PinnedTTL is far above NATS_PINNED_TTL: the consumer's is the one that counts, so a killed replica is taken over only after it",
			"consumer", name, "pinnedTTL", ttl, "NATS_PINNED_TTL", c.pinnedTTL())
	}
	return nil
}

func checkOperatorConsumer(cfg jetstream.ConsumerConfig, c Config, want []string) error {
	filters := cfg.FilterSubjects
	if cfg.FilterSubject != "" {
		filters = []string{cfg.FilterSubject}
	}
	// Filtering an input subject the stream does not capture is harmless.
	if !sameSet(filters, want) && !sameSet(filters, c.inputSubjects()) {
		return fmt.Errorf("consumer %s (not created by the worker, so left unchanged) filters %q; it must filter exactly %q",
			c.Consumer, filters, want)
	}
	if cfg.AckPolicy != jetstream.AckExplicitPolicy {
		return fmt.Errorf("consumer %s has ack policy %s; the worker needs explicit acks", c.Consumer, cfg.AckPolicy)
	}
	if len(cfg.BackOff) > 0 {
		return fmt.Errorf("consumer %s has a BackOff list, which skews NakWithDelay; remove it (the worker backs off itself)", c.Consumer)
	}
	return checkPinnedTTL(cfg, c, c.Consumer)
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
