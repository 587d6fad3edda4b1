package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

var httpAddrRe = regexp.MustCompile(`serving /metrics, /healthz and /readyz.*addr"?[=:]"?([^\s"]+)`)

// startWorker runs `cancel-worker run` in-process with its HTTP endpoints on a
// free port and returns their base URL and a stop function.
func startWorker(t *testing.T, env map[string]string) (string, *syncBuffer, func() error) {
	t.Helper()
	env["HTTP_ADDR"] = "127.0.0.1:0"
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, envFunc(env), &logs, &logs) }()
	var addr string
	require.Eventually(t, func() bool {
		m := httpAddrRe.FindStringSubmatch(logs.String())
		if m == nil {
			return false
		}
		addr = m[1]
		return true
	}, waitFor, 5*time.Millisecond, "%s", &logs)
	stop := func() error {
		cancel()
		return <-done
	}
	return "http://" + addr, &logs, stop
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, base+"/metrics")
	require.Equal(t, http.StatusOK, code)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err)
	return families
}

// value returns the value of the series of name whose labels include want.
func value(families map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := families[name]
	if !ok {
		return 0
	}
	var sum float64
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func TestMetricsMatchWhatHappened(t *testing.T) {
	t.Parallel()
	s := newStack(t, bybittest.Options{AutoCreate: true}, nil)
	s.env["BYBIT_BATCH"] = "false" // one exchange request per order: counts compare 1:1
	base, _, stop := startWorker(t, s.env)
	code, _ := get(t, base+"/healthz")
	require.Equal(t, http.StatusOK, code)

	s.ex.InjectFault(bybittest.Fault{
		Match:   func(category, _, _, _ string) bool { return category == "spot" },
		RetCode: 170145, RetMsg: "This order type does not support cancellation",
	})
	linearOnly := func(category, _, _, _ string) bool { return category == "linear" }
	s.ex.InjectFault( // the exchange says the UID limit is exceeded, twice
		bybittest.Fault{Match: linearOnly, RetCode: 10006, RetMsg: "Too many visits!"},
		bybittest.Fault{Match: linearOnly, RetCode: 10006, RetMsg: "Too many visits!"},
	)
	const linear = 6
	for i := range linear {
		_, err := s.js.Publish(context.Background(), "orders.cancel", []byte(fmt.Sprintf(`{"category":"linear","symbol":"BTCUSDT","orderId":"m-%d"}`, i)))
		require.NoError(t, err)
	}
	_, err := s.js.Publish(context.Background(), "orders.cancel", []byte(`{"category":"spot","symbol":"BTCUSDT","orderId":"s-1"}`))
	require.NoError(t, err)
	_, err = s.js.Publish(context.Background(), "orders.cancel", []byte(`{"category":"spot","symbol":"btc","orderId":"s-2"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(s.results()) == linear+2 }, waitFor, 20*time.Millisecond)

	var limited, sent float64
	for _, q := range s.ex.Requests() {
		if q.Path == "/v5/order/cancel" {
			sent++
			if q.RetCode == 10006 {
				limited++
			}
		}
	}
	require.Positive(t, limited, "the scenario must include rate-limited answers")
	// A result is counted once it is stored, so the counters may trail the
	// stream for a moment: scrape until every result is counted.
	var f map[string]*dto.MetricFamily
	require.Eventually(t, func() bool {
		f = scrape(t, base)
		return value(f, "cancel_worker_results_total", nil) == linear+2 && value(f, "cancel_worker_request_to_result_seconds", nil) == linear+2
	}, waitFor, 20*time.Millisecond)
	require.EqualValues(t, linear+2, value(f, "cancel_worker_messages_received_total", nil))
	require.EqualValues(t, linear, value(f, "cancel_worker_results_total", map[string]string{"status": "cancelled", "category": "linear"}))
	require.EqualValues(t, 1, value(f, "cancel_worker_results_total", map[string]string{"status": "rejected", "category": "spot"}))
	require.EqualValues(t, 1, value(f, "cancel_worker_results_total", map[string]string{"status": "invalid", "category": "none"}))
	require.EqualValues(t, limited, value(f, "cancel_worker_rate_limited_total", map[string]string{"category": "linear"}))
	require.EqualValues(t, limited, value(f, "cancel_worker_exchange_requests_total", map[string]string{"outcome": "rate_limited"}))
	require.EqualValues(t, limited, value(f, "cancel_worker_retries_total", map[string]string{"reason": "rate_limited"}))
	require.EqualValues(t, 1, value(f, "cancel_worker_exchange_requests_total", map[string]string{"category": "spot", "outcome": "permanent"}))
	require.EqualValues(t, sent, value(f, "cancel_worker_exchange_requests_total", nil))
	require.EqualValues(t, sent, value(f, "cancel_worker_exchange_request_duration_seconds", nil))
	require.EqualValues(t, linear+2, value(f, "cancel_worker_request_to_result_seconds", nil))
	require.Zero(t, value(f, "cancel_worker_redeliveries_total", nil))
	require.Zero(t, value(f, "cancel_worker_requests_in_flight", nil))
	require.Zero(t, value(f, "cancel_worker_ip_ban_pauses_total", nil))

	// Confirmations: one per cancelled order, over the private stream.
	require.Eventually(t, func() bool { return len(s.confirmations()) == linear }, waitFor, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		return value(scrape(t, base), "cancel_worker_confirmations_total", map[string]string{"order_status": "Cancelled", "confirmed_by": "websocket"}) == linear
	}, waitFor, 20*time.Millisecond)
	f = scrape(t, base)
	require.EqualValues(t, linear, value(f, "cancel_worker_ack_to_confirmation_seconds", nil))
	require.EqualValues(t, 1, value(f, "cancel_worker_private_stream_up", map[string]string{"account": "default"}))
	require.Zero(t, value(f, "cancel_worker_private_stream_drops_total", nil))

	// No label takes unbounded values: every label is one of a known few.
	allowed := map[string]*regexp.Regexp{
		"status":       regexp.MustCompile(`^(cancelled|not_open|rejected|invalid|failed)$`),
		"category":     regexp.MustCompile(`^(spot|linear|inverse|option|none)$`),
		"endpoint":     regexp.MustCompile(`^(cancel|cancel-batch|cancel-all|order-realtime|order-history)$`),
		"order_status": regexp.MustCompile(`^(New|PartiallyFilled|Untriggered|Rejected|PartiallyFilledCanceled|Filled|Cancelled|Triggered|Deactivated|none|other)$`),
		"confirmed_by": regexp.MustCompile(`^(websocket|rest|unknown)$`),
		"account":      regexp.MustCompile(`^default$`), // the accounts configured, here one
		"group":        regexp.MustCompile(`^default$`), // their limit groups
		"consumer":     regexp.MustCompile(`^cancel-worker$`),
		"outcome":      regexp.MustCompile(`^(ok|not_open|rate_limited|clock_skew|transient|ip_ban|permanent)$`),
		"reason":       regexp.MustCompile(`^(rate_limited|clock_skew|transient|ip_ban|retry_budget)$`),
		// cancel_worker_build_info: one series per process.
		"version":   regexp.MustCompile(`^(\(devel\)|v\S+)$`),
		"revision":  regexp.MustCompile(`^([0-9a-f]{7,40}(\+dirty)?|unknown)$`),
		"goversion": regexp.MustCompile(`^go1\.\d+`),
	}
	for name, fam := range f {
		if !strings.HasPrefix(name, "cancel_worker_") {
			continue
		}
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				re, ok := allowed[l.GetName()]
				require.True(t, ok, "%s has an unexpected label %q", name, l.GetName())
				require.Regexp(t, re, l.GetValue(), "%s{%s}", name, l.GetName())
			}
		}
	}
	require.NoError(t, stop())
}

func TestReadyzFollowsTheNATSConnection(t *testing.T) {
	t.Parallel()
	store := t.TempDir()
	ns := embedded.StartForTest(t, embedded.NATSOptions{StoreDir: store})
	port := ns.Addr().(*net.TCPAddr).Port
	s := newStack(t, bybittest.Options{}, nil)
	s.env["NATS_URL"] = ns.ClientURL()
	base, logs, stop := startWorker(t, s.env)
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == http.StatusOK }, waitFor, 10*time.Millisecond, "%s", logs)

	ns.Shutdown()
	ns.WaitForShutdown()
	require.Eventually(t, func() bool {
		c, body := get(t, base+"/readyz")
		return c == http.StatusServiceUnavailable && strings.Contains(body, "NATS")
	}, waitFor, 10*time.Millisecond)
	code, _ := get(t, base+"/healthz")
	require.Equal(t, http.StatusOK, code, "alive while NATS is down")

	embedded.StartForTest(t, embedded.NATSOptions{StoreDir: store, Port: port})
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == http.StatusOK }, waitFor, 10*time.Millisecond, "%s", logs)
	require.NoError(t, stop())
	require.Contains(t, logs.String(), "NATS disconnected")
	require.Contains(t, logs.String(), "NATS reconnected")
}
