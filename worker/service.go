package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// Service names and defaults of the sync service.
const (
	// ServiceName is the micro service every replica registers.
	ServiceName = "cancel-worker"
	// ServiceQueueGroup is the queue group of its endpoints: one replica
	// answers each request.
	ServiceQueueGroup = "cancel-worker"
	// DefaultSyncTimeout is how long a request waits without a
	// Cancel-Timeout header: below `nats req`'s default 5 s, so that the
	// caller gets the 504 naming the sequence rather than its own timeout.
	DefaultSyncTimeout = 4 * time.Second
)

// ServiceVersion is what `nats micro info` shows.
var ServiceVersion = "1.0.0"

// ServiceConfig is what the sync service needs: its connections and the
// worker's subjects (Config's stream, input, result, confirmed and sync
// subjects, Confirm and SyncMaxTimeout).
type ServiceConfig struct {
	Conn   *nats.Conn
	JS     jetstream.JetStream
	Worker Config
	// Registerer receives the service's metrics; nil: a private registry.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Service is the micro service `cancel-worker`: endpoint cancel on
// Config.SyncCancelSubject and cancel-all on Config.SyncCancelAllSubject.
// Each request is published through JetStream to the input subject and
// answered with its stored result.
type Service struct {
	c       ServiceConfig
	log     *slog.Logger
	follow  *ResultFollower
	metrics *serviceMetrics

	mu       sync.Mutex
	svc      micro.Service
	stream   jetstream.Stream
	off      string   // why the service is off; empty while it runs
	offParts []string // endpoints off while the service runs, and why
	stopping bool
	inFlight sync.WaitGroup
	stopCtx  context.Context
	stop     context.CancelFunc

	stats map[string]*endpointStats
}

// endpointStats are what `nats micro stats` shows in an endpoint's data.
type endpointStats struct {
	Answered  int64   `json:"answered"`
	Timeouts  int64   `json:"timeouts"`
	Errors    int64   `json:"errors"`
	Waiting   int64   `json:"waiting"`
	WaitMsAvg float64 `json:"wait_ms_avg"`
	WaitMsMax float64 `json:"wait_ms_max"`
	totalWait time.Duration
	waitCount int64
}

type serviceMetrics struct {
	replies *prometheus.CounterVec
	wait    *prometheus.HistogramVec
	waiting *prometheus.GaugeVec
}

func newServiceMetrics(reg prometheus.Registerer) *serviceMetrics {
	m := &serviceMetrics{
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: "sync",
			Name: "replies_total", Help: "Replies of the sync service by endpoint and outcome (answered, timeout, bad_request, conflict, unavailable, error)."},
			[]string{"endpoint", "outcome"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Subsystem: "sync",
			Name: "wait_seconds", Help: "Time from a sync request to its reply, answered or timed out.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 4, 8, 16, 30, 60}}, []string{"endpoint"}),
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Subsystem: "sync",
			Name: "waiting", Help: "Sync requests waiting for their result now."}, []string{"endpoint"}),
	}
	reg.MustRegister(m.replies, m.wait, m.waiting)
	return m
}

// Endpoint names.
const (
	EndpointCancel    = "cancel"
	EndpointCancelAll = "cancel-all"
)

// NewService prepares the sync service; Start registers it.
func NewService(c ServiceConfig) (*Service, error) {
	if c.Conn == nil || c.JS == nil || c.Logger == nil {
		return nil, errors.New("worker: ServiceConfig needs Conn, JS and Logger")
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.Worker.now == nil {
		c.Worker.now = time.Now
	}
	var confirmed string
	if c.Worker.Confirm {
		confirmed = c.Worker.ConfirmedSubject
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{
		c: c, log: c.Logger, metrics: newServiceMetrics(c.Registerer),
		follow: NewResultFollower(c.JS, FollowerConfig{
			Stream: c.Worker.Stream, ResultSubjects: c.Worker.resultSubjects(), ConfirmedSubject: confirmed, Logger: c.Logger,
		}),
		stopCtx: ctx, stop: cancel,
		stats: map[string]*endpointStats{EndpointCancel: {}, EndpointCancelAll: {}},
		off:   "not started",
	}, nil
}

// syncEndpoint is one endpoint of the sync service.
type syncEndpoint struct {
	name, subject, input, account string
	// all: a cancel-all endpoint.
	all bool
}

// syncEndpoints are the service's endpoints: cancel and cancel-all, and
// those of the accounts with their own sync subjects (cancel-<account>,
// cancel-all-<account>).
func (c Config) syncEndpoints() []syncEndpoint {
	var out []syncEndpoint
	if c.SyncCancelSubject != "" {
		out = append(out, syncEndpoint{name: EndpointCancel, subject: c.SyncCancelSubject, input: c.CancelSubject})
	}
	if c.SyncCancelAllSubject != "" {
		out = append(out, syncEndpoint{name: EndpointCancelAll, subject: c.SyncCancelAllSubject, input: c.CancelAllSubject, all: true})
	}
	for _, name := range c.accountNames() {
		a := c.Accounts[name].Subjects
		if a.SyncCancelSubject != "" {
			out = append(out, syncEndpoint{name: EndpointCancel + "-" + endpointSafe(name), subject: a.SyncCancelSubject, input: a.CancelSubject, account: name})
		}
		if a.SyncCancelAllSubject != "" {
			out = append(out, syncEndpoint{name: EndpointCancelAll + "-" + endpointSafe(name), subject: a.SyncCancelAllSubject, input: a.CancelAllSubject, account: name, all: true})
		}
	}
	return out
}

// endpointSafe makes an account name a valid micro endpoint name.
func endpointSafe(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, name)
}

// usable are the endpoints the stream lets work: none when it captures a
// sync subject itself (JetStream would answer those requests with a
// receipt); without an endpoint whose input subject it does not capture.
// offParts say why each endpoint left out is off; off says it in one line.
func (s *Service) usable(endpoints []syncEndpoint, streamSubjects []string) (usable []syncEndpoint, offParts []string, off string) {
	var captured []string
	for _, ep := range endpoints {
		if subjectCovered(streamSubjects, ep.subject) {
			captured = append(captured, ep.subject)
		}
	}
	if len(captured) > 0 {
		why := fmt.Sprintf("sync service off: stream %s captures %s (JetStream would answer those requests with a receipt); remove them from the stream's subjects or choose other sync subjects",
			s.c.Worker.Stream, strings.Join(captured, ", "))
		s.log.Warn(why)
		return nil, nil, why
	}
	endpoints = slices.DeleteFunc(endpoints, func(ep syncEndpoint) bool {
		if subjectCovered(streamSubjects, ep.input) {
			return false
		}
		what := "cancel requests"
		if ep.all {
			what = "cancel-all requests"
		}
		offParts = append(offParts, fmt.Sprintf("sync %s off: stream %s does not capture %s (%s are off)", ep.name, s.c.Worker.Stream, ep.input, what))
		return true
	})
	for _, why := range offParts {
		s.log.Warn(why)
	}
	return endpoints, offParts, strings.Join(offParts, "; ")
}

// Start checks that the stream does not capture a sync subject, starts
// following the results and registers the service. A stream that captures
// a sync subject (JetStream would answer the request with a receipt) leaves
// the service off: Start logs a warning and returns nil, and Status says
// why. An endpoint whose input subject the stream does not capture (an
// operator's stream without the cancel-all subject: cancel-all intake is
// off) is off too, and Off says why. Errors are those of NATS.
func (s *Service) Start(ctx context.Context) error {
	endpoints := s.c.Worker.syncEndpoints()
	if len(endpoints) == 0 {
		s.setOff("no sync subjects configured")
		return nil
	}
	st, err := s.c.JS.Stream(ctx, s.c.Worker.Stream)
	if err != nil {
		return fmt.Errorf("sync service: look up stream %s: %w", s.c.Worker.Stream, err)
	}
	streamSubjects := st.CachedInfo().Config.Subjects
	s.mu.Lock()
	s.stream = st // before any endpoint takes a request
	s.mu.Unlock()
	endpoints, offParts, off := s.usable(endpoints, streamSubjects)
	if len(endpoints) == 0 {
		s.setOff(off)
		return nil
	}
	if err := s.follow.Start(ctx); err != nil {
		return fmt.Errorf("sync service: %w", err)
	}
	svc, err := micro.AddService(s.c.Conn, micro.Config{
		Name:        ServiceName,
		Version:     ServiceVersion,
		Description: "Cancel Bybit orders and wait for the stored result",
		QueueGroup:  ServiceQueueGroup,
		Metadata:    map[string]string{"stream": s.c.Worker.Stream},
		StatsHandler: func(e *micro.Endpoint) any {
			return s.endpointStats(e.Name)
		},
	})
	if err != nil {
		s.follow.Stop()
		return fmt.Errorf("sync service: %w", err)
	}
	s.mu.Lock()
	for _, ep := range endpoints {
		s.stats[ep.name] = &endpointStats{}
	}
	s.mu.Unlock()
	for _, ep := range endpoints {
		md := map[string]string{"input": ep.input}
		if ep.account != "" {
			md["account"] = ep.account
		}
		if err := svc.AddEndpoint(ep.name, s.handler(ep), micro.WithEndpointSubject(ep.subject),
			micro.WithEndpointMetadata(md)); err != nil {
			_ = svc.Stop()
			s.follow.Stop()
			return fmt.Errorf("sync service: endpoint %s on %s: %w", ep.name, ep.subject, err)
		}
	}
	if err := s.c.Conn.Flush(); err != nil {
		_ = svc.Stop()
		s.follow.Stop()
		return fmt.Errorf("sync service: register: %w", err)
	}
	s.mu.Lock()
	s.svc, s.off, s.offParts = svc, "", offParts
	s.mu.Unlock()
	subjects := make([]string, len(endpoints))
	for i, ep := range endpoints {
		subjects[i] = ep.subject
	}
	s.log.Info("sync service started", "service", ServiceName, "subjects", strings.Join(subjects, ","))
	return nil
}

func (s *Service) setOff(why string) {
	s.mu.Lock()
	s.off = why
	s.mu.Unlock()
}

// Status reports whether the service runs, and if not, why.
func (s *Service) Status() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.off != "" {
		return false, s.off
	}
	return true, "sync service on"
}

// Off lists the endpoints that are off while the service runs, and why
// (for /readyz's detail).
func (s *Service) Off() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.offParts)
}

// Stop deregisters the service, answers every request still waiting with a
// 503 that names its stream sequence, and stops following the results.
func (s *Service) Stop() {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return
	}
	s.stopping = true
	svc := s.svc
	if s.off == "" {
		s.off = "stopped"
	}
	s.mu.Unlock()
	if svc != nil {
		if err := svc.Stop(); err != nil {
			s.log.Warn("sync service: stop", "error", err)
		}
	}
	s.stop()
	s.inFlight.Wait()
	s.follow.Stop()
}

// handler checks a request's headers and answers a bad one at once (with
// micro's Error, which `nats micro stats` counts), then hands the request to
// its own goroutine: micro runs a handler at a time per endpoint, and a
// request waits for its result.
func (s *Service) handler(ep syncEndpoint) micro.HandlerFunc {
	return func(req micro.Request) {
		r, bad := s.parse(nats.Header(req.Headers()))
		if bad != "" {
			s.refuse(req, ep.name, "bad_request", 400, bad)
			return
		}
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			s.refuse(req, ep.name, "unavailable", 503, "cancel-worker is stopping: send the request again (another replica takes it)")
			return
		}
		s.inFlight.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.inFlight.Done()
			s.handle(req, ep, r)
		}()
	}
}

// syncRequest is what a request's headers ask for.
type syncRequest struct {
	confirmed bool
	timeout   time.Duration
	msgID     string
}

// parse reads a request's headers; bad says what is wrong with them.
func (s *Service) parse(h nats.Header) (r syncRequest, bad string) {
	switch wait := h.Get(messages.HeaderWait); wait {
	case "", messages.WaitResult:
	case messages.WaitConfirmed:
		if !s.c.Worker.Confirm {
			return r, fmt.Sprintf("header %s: confirmed: confirmations are off on this worker (CONFIRM=false)", messages.HeaderWait)
		}
		r.confirmed = true
	default:
		return r, fmt.Sprintf("header %s: %q is not %s or %s", messages.HeaderWait, wait, messages.WaitResult, messages.WaitConfirmed)
	}
	r.timeout = DefaultSyncTimeout
	if v := h.Get(messages.HeaderTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return r, fmt.Sprintf("header %s: %q is not a positive Go duration such as 4s or 500ms", messages.HeaderTimeout, v)
		}
		r.timeout = d
	}
	if max := s.c.Worker.SyncMaxTimeout; max > 0 && r.timeout > max {
		r.timeout = max
	}
	r.msgID = h.Get(nats.MsgIdHdr)
	if p, reserved := messages.ReservedMsgID(r.msgID); reserved {
		return r, fmt.Sprintf("header %s: Nats-Msg-Id %s starts with %q, a prefix the worker gives its own messages (%s): choose another id, e.g. with a uuid",
			nats.MsgIdHdr, r.msgID, p, strings.Join(messages.ReservedMsgIDPrefixes, ", "))
	}
	if r.msgID == "" {
		r.msgID = newMsgID()
	}
	return r, ""
}

// serviceReply is a reply to send.
type serviceReply struct {
	headers nats.Header
	data    []byte
}

func (s *Service) handle(req micro.Request, ep syncEndpoint, r syncRequest) {
	start := s.c.Worker.now()
	endpoint, input, msgID, timeout := ep.name, ep.input, r.msgID, r.timeout
	replyHeaders := nats.Header{nats.MsgIdHdr: []string{msgID}, messages.HeaderStream: []string{s.c.Worker.Stream}}

	ctx, cancel := context.WithTimeout(s.stopCtx, timeout)
	defer cancel()
	ack, err := s.c.JS.PublishMsg(ctx, &nats.Msg{Subject: input, Data: req.Data()},
		jetstream.WithMsgID(msgID), jetstream.WithExpectStream(s.c.Worker.Stream))
	if err != nil {
		outcome, code, description := s.publishFailure(err, input, timeout, msgID)
		s.respondError(req, endpoint, outcome, code, description, replyHeaders)
		return
	}
	if ack.Duplicate && !s.sameRequest(ctx, req, endpoint, input, msgID, ack.Sequence, replyHeaders) {
		return
	}
	replyHeaders.Set(messages.HeaderRequestSeq, strconv.FormatUint(ack.Sequence, 10))
	if ack.Duplicate {
		replyHeaders.Set(messages.HeaderDuplicate, "true")
	}

	s.waiting(endpoint, 1)
	ans, err := s.follow.Wait(ctx, ack.Sequence, r.confirmed)
	s.waiting(endpoint, -1)
	waited := s.c.Worker.now().Sub(start)
	if err != nil {
		var data []byte
		what := "result"
		if ans.Result != nil {
			what = "confirmations"
			data, _ = ans.Marshal(true)
		}
		if s.stopCtx.Err() != nil {
			s.respondError(req, endpoint, "unavailable", 503, fmt.Sprintf("cancel-worker is stopping: the request is stored in stream %s at sequence %d; its result will be on the result subjects", s.c.Worker.Stream, ack.Sequence), replyHeaders)
			return
		}
		s.observeWait(endpoint, waited, true)
		s.respondError(req, endpoint, "timeout", 504, fmt.Sprintf("no %s within %v for the request stored in stream %s at sequence %d: find it later by requestSeq %d on the result subjects", what, timeout, s.c.Worker.Stream, ack.Sequence, ack.Sequence), replyHeaders, data)
		return
	}
	data, err := ans.Marshal(r.confirmed)
	if err != nil {
		s.respondError(req, endpoint, "error", 500, "encode the answer: "+err.Error(), replyHeaders)
		return
	}
	s.observeWait(endpoint, waited, false)
	s.respond(req, endpoint, "answered", serviceReply{headers: replyHeaders, data: data})
}

// publishFailure says what to answer when the request could not be stored.
func (s *Service) publishFailure(err error, input string, timeout time.Duration, msgID string) (outcome string, code int, description string) {
	stream := s.c.Worker.Stream
	switch {
	case s.stopCtx.Err() != nil:
		return "unavailable", 503, "cancel-worker is stopping before the stream acknowledged the request: send it again with the same Nats-Msg-Id " + msgID
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout", 504, fmt.Sprintf("stream %s did not acknowledge the request within %v: it may be stored; send it again with the same Nats-Msg-Id %s", stream, timeout, msgID)
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse):
		return "unavailable", 503, fmt.Sprintf("no stream stored the request on %s: is stream %s up and capturing it?", input, stream)
	}
	return "error", 500, fmt.Sprintf("stream %s refused the request on %s: %v", stream, input, err)
}

// sameRequest checks, for a duplicate PubAck, that the message stored at seq
// is this request: on this endpoint's input subject, with this body. The
// stream deduplicates by Nats-Msg-Id alone, across every subject and
// publisher, so an id reused for another order (a caller's counter that
// restarted) or another kind of message names a sequence that does not hold
// this request; such a request was not stored, and is answered with a 409
// (or, when the check cannot be made, an error) instead of another
// message's result. It reports whether the request may wait.
func (s *Service) sameRequest(ctx context.Context, req micro.Request, endpoint, input, msgID string, seq uint64, headers nats.Header) bool {
	s.mu.Lock()
	st := s.stream
	s.mu.Unlock()
	m, err := st.GetMsg(ctx, seq)
	switch {
	case err == nil && m.Subject == input && sameBody(m.Data, req.Data()):
		return true
	case err == nil:
		s.respondError(req, endpoint, "conflict", 409, fmt.Sprintf("Nats-Msg-Id %s was used at sequence %d for another message; nothing was stored", msgID, seq), headers)
	case errors.Is(err, jetstream.ErrMsgNotFound):
		s.respondError(req, endpoint, "conflict", 409, fmt.Sprintf("Nats-Msg-Id %s was used at sequence %d, which stream %s no longer holds; nothing was stored: send the request with a new Nats-Msg-Id", msgID, seq, s.c.Worker.Stream), headers)
	case s.stopCtx.Err() != nil:
		s.respondError(req, endpoint, "unavailable", 503, "cancel-worker is stopping: send the request again with the same Nats-Msg-Id "+msgID, headers)
	default:
		s.respondError(req, endpoint, "error", 500, fmt.Sprintf("Nats-Msg-Id %s is a duplicate of sequence %d of stream %s, which could not be read to check it is this request: %v; send the request again with the same Nats-Msg-Id", msgID, seq, s.c.Worker.Stream, err), headers)
	}
	return false
}

// sameBody reports whether two request bodies are the same message: equal
// bytes, or equal JSON (a caller that encodes its retry anew may order the
// keys or space them differently).
func sameBody(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// refuse answers a request from the handler itself with micro's Error, so
// that `nats micro stats` counts it (num_errors, last_error).
func (s *Service) refuse(req micro.Request, endpoint, outcome string, code int, description string) {
	s.metrics.replies.WithLabelValues(endpoint, outcome).Inc()
	s.mu.Lock()
	s.stats[endpoint].Errors++
	s.mu.Unlock()
	if req.Reply() == "" {
		return // published, not requested: nobody to answer
	}
	if err := req.Error(strconv.Itoa(code), description, nil); err != nil {
		s.log.Warn("sync service: reply not sent", "endpoint", endpoint, "error", err)
	}
}

// respondError answers with micro's error headers, set here, from a
// request's own goroutine (micro's own Error records the error after the
// handler returns, which races with a reply from another goroutine): these
// errors (409, 500, 503, 504) are counted in the endpoint's data (errors,
// timeouts), not in micro's num_errors.
func (s *Service) respondError(req micro.Request, endpoint, outcome string, code int, description string, headers nats.Header, data ...[]byte) {
	hdr := nats.Header{}
	for k, v := range headers {
		hdr[k] = v
	}
	hdr.Set(micro.ErrorHeader, description)
	hdr.Set(micro.ErrorCodeHeader, strconv.Itoa(code))
	var body []byte
	if len(data) > 0 {
		body = data[0]
	}
	if outcome != "timeout" {
		s.mu.Lock()
		s.stats[endpoint].Errors++
		s.mu.Unlock()
	}
	s.respond(req, endpoint, outcome, serviceReply{headers: hdr, data: body})
}

func (s *Service) respond(req micro.Request, endpoint, outcome string, r serviceReply) {
	s.metrics.replies.WithLabelValues(endpoint, outcome).Inc()
	if req.Reply() == "" {
		return // published, not requested: nobody to answer
	}
	if err := s.c.Conn.PublishMsg(&nats.Msg{Subject: req.Reply(), Header: r.headers, Data: r.data}); err != nil {
		s.log.Warn("sync service: reply not sent", "endpoint", endpoint, "error", err)
	}
}

func (s *Service) waiting(endpoint string, d int64) {
	s.metrics.waiting.WithLabelValues(endpoint).Add(float64(d))
	s.mu.Lock()
	s.stats[endpoint].Waiting += d
	s.mu.Unlock()
}

func (s *Service) observeWait(endpoint string, d time.Duration, timedOut bool) {
	s.metrics.wait.WithLabelValues(endpoint).Observe(d.Seconds())
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats[endpoint]
	if timedOut {
		st.Timeouts++
	} else {
		st.Answered++
	}
	st.totalWait += d
	st.waitCount++
	st.WaitMsAvg = float64(st.totalWait.Microseconds()) / 1000 / float64(st.waitCount)
	st.WaitMsMax = max(st.WaitMsMax, float64(d.Microseconds())/1000)
}

// endpointStats is the data `nats micro stats` shows for an endpoint.
func (s *Service) endpointStats(endpoint string) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.stats[endpoint]
	if !ok {
		return nil
	}
	return json.RawMessage(mustJSON(*st))
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// newMsgID is a Nats-Msg-Id for a request that came without one.
func newMsgID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "sync-" + hex.EncodeToString(b)
}
