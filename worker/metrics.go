package worker

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// Metrics are the worker's Prometheus metrics. Every label takes a bounded set
// of values (category, endpoint, status, outcome class, reason); never an
// order id or a request id.
type Metrics struct {
	received        prometheus.Counter
	redeliveries    prometheus.Counter
	results         *prometheus.CounterVec
	requests        *prometheus.CounterVec
	retries         *prometheus.CounterVec
	rateLimited     *prometheus.CounterVec
	rateLimitWait   *prometheus.CounterVec
	budgetRemaining *prometheus.GaugeVec
	budgetLimit     *prometheus.GaugeVec
	active          *prometheus.GaugeVec
	exchangeLatency *prometheus.HistogramVec
	resultLatency   *prometheus.HistogramVec
	held            prometheus.Gauge
	inFlight        prometheus.Gauge
	backlog         prometheus.Gauge
	oldestAge       prometheus.Gauge
	clockOffset     prometheus.Gauge
	banPauses       prometheus.Counter
	banned          prometheus.Gauge
	confirmations   *prometheus.CounterVec
	partlyFilled    *prometheus.CounterVec
	confirmLatency  *prometheus.HistogramVec
	streamUp        *prometheus.GaugeVec
	dcpArmed        *prometheus.GaugeVec
	dcpWindow       *prometheus.GaugeVec
	streamDrops     *prometheus.CounterVec
	// storeBytes and storeMaxBytes are the NATS stream's size and limit
	// (NATS_STREAM_MAX_BYTES; 0: none), for an alert before it is full.
	storeBytes    prometheus.Gauge
	storeMaxBytes prometheus.Gauge
	// Environment and account fitness (issue 16).
	accountUsable    *prometheus.GaugeVec
	batchUnavailable *prometheus.GaugeVec
	batchRefused     *prometheus.CounterVec
	// msgIDCollisions: results whose Nats-Msg-Id another message held.
	msgIDCollisions prometheus.Counter
}

const namespace = "cancel_worker"

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace,
			Name: "messages_received_total", Help: "Cancel requests delivered to this process, redeliveries included."}),
		redeliveries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace,
			Name: "redeliveries_total", Help: "Deliveries with JetStream NumDelivered > 1."}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
			Name: "results_total", Help: "Results published, by status and category."}, []string{"status", "category"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
			Name: "exchange_requests_total", Help: "Requests to Bybit by endpoint, category and outcome class."}, []string{"endpoint", "category", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
			Name: "retries_total", Help: "Attempts repeated or deliveries released, by reason."}, []string{"reason"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
			Name: "rate_limited_total", Help: "Answers saying a rate limit was exceeded: the UID limit (10006, 170222, HTTP 429) or the IP limit (10018)."}, []string{"category"}),
		rateLimitWait: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
			Name: "rate_limit_wait_seconds_total", Help: "Time requests spent waiting for rate-limit budget, summed over requests."}, []string{"category"}),
		budgetRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace,
			Name: "rate_limit_remaining", Help: "Requests left in the current window, as Bybit's X-Bapi-Limit-Status last said."}, []string{"endpoint", "category"}),
		budgetLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace,
			Name: "budget_limit", Help: "Requests per second a budget paces to: Bybit's X-Bapi-Limit as last learned (its share), capped by an explicit limit."}, []string{"group", "endpoint", "category"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace,
			Name: "active", Help: "1 while this replica is the one the consumer pins (or the consumer pins none) and its lease holds: it sends; 0 on a standby."}, []string{"consumer"}),
		exchangeLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace,
			Name: "exchange_request_duration_seconds", Help: "Duration of one request to Bybit.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"endpoint"}),
		resultLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace,
			Name: "request_to_result_seconds", Help: "From the request's stream timestamp to its result being stored.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}, []string{"status"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
			Name: "messages_held", Help: "Messages pulled and not yet answered (bounded by MaxAckPending)."}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
			Name: "requests_in_flight", Help: "HTTP requests to Bybit under way (bounded by WORKER_CONCURRENCY)."}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
			Name: "consumer_pending_messages", Help: "Requests in the stream not yet delivered to any worker (the consumer's NumPending)."}),
		oldestAge: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
			Name: "oldest_held_request_age_seconds", Help: "Age of the oldest request this process holds without a result."}),
		clockOffset: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
			Name: "clock_offset_seconds", Help: "Bybit's clock minus the local clock, as last measured (the largest of the accounts')."}),
		banPauses: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace,
			Name: "ip_ban_pauses_total", Help: "Pauses started by an HTTP 403 without a Bybit envelope (IP ban or CDN refusal)."}),
		banned: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
			Name: "ip_banned", Help: "1 while every request is paused by an IP ban."}),
		confirmations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
			Name: "confirmations_total", Help: "Confirmations published, by the order status observed and how it was learnt."}, []string{"order_status", "confirmed_by"}),
		partlyFilled: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
			Name: "confirmations_partly_filled_total", Help: "Confirmations of orders that filled in part before the cancel landed (cumExecQty > 0, not Filled)."}, []string{"category"}),
		confirmLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace,
			Name: "ack_to_confirmation_seconds", Help: "From a result being stored to its order's confirmation.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"confirmed_by"}),
		streamUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace,
			Name: "private_stream_up", Help: "1 while the account's private order stream is authenticated and subscribed."}, []string{"account"}),
		dcpArmed: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace,
			Name: "dcp_armed", Help: "1 while this replica holds the account's dead-man switch (Bybit's Disconnect Cancel All): window set and read back, private stream subscribed to the dcp topics."}, []string{"account"}),
		dcpWindow: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace,
			Name: "dcp_window_seconds", Help: "The Disconnect Cancel All window Bybit reports per product (query-dcp-info) at start."}, []string{"account", "product"}),
		streamDrops: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
			Name: "private_stream_drops_total", Help: "Private order stream connections lost or refused."}, []string{"account"}),
		storeBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
			Name: "nats_stream_bytes", Help: "Bytes stored in the NATS stream (NATS_STREAM)."}),
		storeMaxBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
			Name: "nats_stream_max_bytes", Help: "The NATS stream's size limit (MaxBytes); 0 when it has none. A full stream refuses new messages (discard new) or deletes old ones (discard old)."}),
		accountUsable: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace,
			Name: "account_usable", Help: "1 when the account's start-up check passed or Bybit has accepted its key since; 0 while its check's failure stands (its cancels are still sent)."}, []string{"account"}),
		batchUnavailable: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace,
			Name: "batch_unavailable", Help: "1 once Bybit said cancel-batch is not offered to the account and category: that lane sends single cancels only."}, []string{"account", "category"}),
		batchRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
			Name: "batch_refused_total", Help: "cancel-batch requests refused as a whole, whose orders were retried one by one as single cancels."}, []string{"category"}),
		msgIDCollisions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace,
			Name: "result_msgid_collisions_total", Help: "Results whose Nats-Msg-Id the stream already held for another message (a request published with it): stored under a fallback id."}),
	}
	reg.MustRegister(m.received, m.redeliveries, m.results, m.requests, m.retries, m.rateLimited,
		m.rateLimitWait, m.budgetRemaining, m.budgetLimit, m.active, m.exchangeLatency, m.resultLatency, m.held, m.inFlight,
		m.backlog, m.oldestAge, m.clockOffset, m.banPauses, m.banned,
		m.confirmations, m.partlyFilled, m.confirmLatency, m.streamUp, m.streamDrops, m.dcpArmed, m.dcpWindow, m.storeBytes, m.storeMaxBytes,
		m.accountUsable, m.batchUnavailable, m.batchRefused, m.msgIDCollisions)
	return m
}

// categoryLabel keeps the label bounded: an invalid request may name anything.
func categoryLabel(c string) string {
	for _, known := range messages.Categories {
		if c == known {
			return c
		}
	}
	return "none"
}

func (m *Metrics) observeRequest(endpoint, category string, d time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = bybit.ClassOf(err).String()
	}
	m.requests.WithLabelValues(endpoint, categoryLabel(category), outcome).Inc()
	m.exchangeLatency.WithLabelValues(endpoint).Observe(d.Seconds())
	if c := bybit.ClassOf(err); err != nil && (c == bybit.ClassRateLimited || c == bybit.ClassIPRateLimited) {
		m.rateLimited.WithLabelValues(categoryLabel(category)).Inc()
	}
}

func (m *Metrics) observeBudget(endpoint, category string, rl bybit.RateLimit) {
	if rl.Known {
		m.budgetRemaining.WithLabelValues(endpoint, categoryLabel(category)).Set(float64(rl.Remaining))
	}
}

// orderStatusLabel keeps the label to Bybit's order statuses.
func orderStatusLabel(s string) string {
	switch s {
	case "New", "PartiallyFilled", "Untriggered", "Rejected", "PartiallyFilledCanceled", "Filled", "Cancelled", "Triggered", "Deactivated":
		return s
	case "":
		return "none"
	}
	return "other"
}

func (m *Metrics) observeConfirmation(c messages.Confirmation) {
	m.confirmations.WithLabelValues(orderStatusLabel(c.OrderStatus), c.ConfirmedBy).Inc()
	if c.PartlyFilled() {
		m.partlyFilled.WithLabelValues(categoryLabel(c.Category)).Inc()
	}
	m.confirmLatency.WithLabelValues(c.ConfirmedBy).Observe(float64(c.AckToConfirmMs) / 1000)
}

func (m *Metrics) observeResult(r messages.Result, stored time.Time) {
	m.results.WithLabelValues(string(r.Status), categoryLabel(r.Category)).Inc()
	if !r.RequestTime.IsZero() {
		m.resultLatency.WithLabelValues(string(r.Status)).Observe(stored.Sub(r.RequestTime).Seconds())
	}
}
