package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// benchReplicas are the workers of a run: `cancel-worker run` processes as
// in production, each serving /metrics where it was told to, or (with
// --in-process) workers inside the bench process.
type benchReplicas struct {
	procs       []*exec.Cmd
	logs        []*embedded.LogBuffer
	metricsURLs []string

	conns  []*nats.Conn // of the in-process workers
	errs   chan error   // an in-process worker that stopped with an error
	wg     sync.WaitGroup
	cancel context.CancelFunc // stops the in-process workers
}

// startReplicas starts o.replicas workers of cfg and returns once they are
// ready. The replicas are to be closed even when it fails.
func startReplicas(ctx context.Context, o benchOptions, cfg worker.Config, natsURL, baseURL string) (*benchReplicas, error) {
	wctx, cancel := context.WithCancel(ctx)
	r := &benchReplicas{errs: make(chan error, o.replicas), cancel: cancel}
	if !o.inProcess {
		return r, r.startProcesses(ctx, o, cfg, natsURL, baseURL)
	}
	for range o.replicas {
		sw, err := newSimWorker(ctx, cfg, natsURL, baseURL)
		if err != nil {
			return r, err
		}
		r.conns = append(r.conns, sw.nc)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := sw.w.Run(wctx); err != nil {
				r.errs <- err
			}
		}()
	}
	return r, nil
}

// stopInProcess stops the in-process workers and waits for them.
func (r *benchReplicas) stopInProcess() {
	r.cancel()
	r.wg.Wait()
}

// close kills the processes and closes the in-process workers' connections.
func (r *benchReplicas) close() {
	for _, p := range r.procs {
		_ = p.Process.Kill()
		_ = p.Wait()
	}
	for _, nc := range slices.Backward(r.conns) {
		nc.Close()
	}
	r.cancel()
}

// peakRSS is the largest peak resident set of the replica processes, or
// (in-process) of the whole bench.
func (r *benchReplicas) peakRSS() int64 {
	if len(r.procs) == 0 {
		return peakRSS("self")
	}
	var rss int64
	for _, p := range r.procs {
		rss = max(rss, peakRSS(strconv.Itoa(p.Process.Pid)))
	}
	return rss
}

// startProcesses runs the replicas as `cancel-worker run` processes, as in
// production, configured through the environment, and waits until each
// serves and pulls from the consumer.
func (r *benchReplicas) startProcesses(ctx context.Context, o benchOptions, cfg worker.Config, natsURL, baseURL string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	set := replicaSettings(o, cfg, natsURL, baseURL)
	for range o.replicas {
		if err := r.startProcess(ctx, self, set); err != nil {
			return err
		}
	}
	return r.waitBound(ctx, natsURL, cfg, o.replicas)
}

// replicaSettings are the settings of `cancel-worker run` each replica
// process gets, but for its HTTP_ADDR.
func replicaSettings(o benchOptions, cfg worker.Config, natsURL, baseURL string) map[string]string {
	var limits []string
	for k, v := range cfg.LimitCeilings { // the explicit ones: --limit
		limits = append(limits, fmt.Sprintf("%s=%d", k, v))
	}
	if o.exchangeLimit > 0 {
		limits = limits[:0] // Bybit's documented defaults, learned up
	}
	if o.noLimit {
		limits = limits[:0]
		for k := range worker.DefaultLimits() {
			limits = append(limits, k+"=0")
		}
	}
	return map[string]string{
		"NATS_URL": natsURL, "BYBIT_BASE_URL": baseURL,
		"BYBIT_API_KEY": bybittest.DemoAPIKey, "BYBIT_API_SECRET": bybittest.DemoAPISecret,
		"BYBIT_IP_LIMIT": o.ipLimit, "BYBIT_LIMITS": strings.Join(limits, ","),
		"BYBIT_BATCH": strconv.FormatBool(cfg.Batch), "BYBIT_LIMIT_SHARE": strconv.FormatFloat(cfg.LimitShare, 'f', -1, 64),
		"WORKER_CONCURRENCY": strconv.Itoa(cfg.Concurrency), "NATS_MAX_ACK_PENDING": strconv.Itoa(cfg.MaxAckPending),
		"LOG_LEVEL": "info", "LOG_FORMAT": "json",
		"CONFIRM": strconv.FormatBool(cfg.Confirm), "BYBIT_WS_URL": cfg.WSURL,
	}
}

// startProcess starts one replica with the settings set, serving /metrics
// on a loopback port of its own.
func (r *benchReplicas) startProcess(ctx context.Context, self string, set map[string]string) error {
	addr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	set["HTTP_ADDR"] = addr
	env, err := settingsEnv(set)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, self, "run")
	cmd.Env = append(os.Environ(), env...)
	lb := &embedded.LogBuffer{}
	cmd.Stderr = lb
	if err := cmd.Start(); err != nil {
		return err
	}
	r.procs = append(r.procs, cmd)
	r.logs = append(r.logs, lb)
	r.metricsURLs = append(r.metricsURLs, "http://"+addr)
	return nil
}

// waitBound waits until the consumer exists (the workers create it), every
// replica answers /healthz and n pull from the consumer. After 30 s it
// prints the replicas' logs and gives up.
func (r *benchReplicas) waitBound(ctx context.Context, natsURL string, cfg worker.Config, n int) error {
	nc, js, err := connectJetStream(natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := js.Consumer(ctx, cfg.Stream, cfg.Consumer)
		if err == nil && allServing(r.metricsURLs) {
			if ci, err := info.Info(ctx); err == nil && ci.NumWaiting >= n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			for _, lb := range r.logs {
				fmt.Fprint(os.Stderr, lb.String())
			}
			return errors.New("bench: the workers did not bind the consumer in 30s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// settingsEnv writes settings of `cancel-worker run` as its environment; a
// name that is not one of its settings is an error, so that the bench
// cannot drift from the command it runs.
func settingsEnv(set map[string]string) ([]string, error) {
	known := map[string]bool{}
	for _, s := range settings {
		known[s.env] = true
	}
	env := make([]string, 0, len(set))
	for _, name := range slices.Sorted(maps.Keys(set)) {
		if !known[name] {
			return nil, fmt.Errorf("bench: %s is not a setting of cancel-worker run", name)
		}
		env = append(env, name+"="+set[name])
	}
	return env, nil
}

// freeLoopbackAddr is a loopback address with a port free now.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// allServing reports whether every replica answers /healthz.
func allServing(urls []string) bool {
	for _, u := range urls {
		resp, err := http.Get(u + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
	}
	return true
}

// activeReplica is the index of the replica that reports
// cancel_worker_active 1 (the first one if none does).
func activeReplica(urls []string) int {
	for i, u := range urls {
		if counterOf(u, "cancel_worker_active") == 1 {
			return i
		}
	}
	return 0
}

// redeliveriesBut is the redeliveries the replicas but the i-th report.
func (r *benchReplicas) redeliveriesBut(i int) float64 {
	var red float64
	for j, u := range r.metricsURLs {
		if j != i {
			red += counterOf(u, "cancel_worker_redeliveries_total")
		}
	}
	return red
}

// counterOf scrapes one worker's /metrics for the sum of a counter or gauge
// over its labels; -1 when it cannot be read.
func counterOf(url, name string) float64 {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return -1
	}
	var sum float64
	for _, m := range families[name].GetMetric() {
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum
}

// peakRSS is a process's peak resident set (VmHWM), in bytes.
func peakRSS(pid string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// benchFailover stops the active replica while the burst drains
// (--kill-after, --sigterm-after) and watches the others take over.
type benchFailover struct {
	sigterm          bool
	timer            *time.Timer // nil: no replica is stopped
	killed           time.Time   // when the replica was stopped
	victim           int
	kill             killReport
	lastRedeliveries float64
	lastRedeliveryAt time.Time
}

// startFailover starts the timer of --kill-after or --sigterm-after, from
// now.
func startFailover(o benchOptions) *benchFailover {
	f := &benchFailover{sigterm: o.sigtermAfter > 0}
	if d := o.killAfter + o.sigtermAfter; d > 0 {
		f.timer = time.NewTimer(d)
	}
	return f
}

// due fires when the active replica is to be stopped (never without a
// timer).
func (f *benchFailover) due() <-chan time.Time {
	if f.timer == nil {
		return nil
	}
	return f.timer.C
}

func (f *benchFailover) stopTimer() {
	if f.timer != nil {
		f.timer.Stop()
	}
}

// stopActive kills (or SIGTERMs) the active replica, noting what the
// replicas had redelivered and what it held.
func (f *benchFailover) stopActive(r *benchReplicas, progress io.Writer) {
	for _, u := range r.metricsURLs {
		f.kill.aliveRedeliveries += counterOf(u, "cancel_worker_redeliveries_total")
	}
	f.victim = activeReplica(r.metricsURLs)
	u := r.metricsURLs[f.victim]
	f.kill.heldAtKill = counterOf(u, "cancel_worker_messages_received_total") - counterOf(u, "cancel_worker_results_total")
	if f.sigterm {
		_ = r.procs[f.victim].Process.Signal(syscall.SIGTERM)
	} else {
		_ = r.procs[f.victim].Process.Kill()
	}
	f.killed = time.Now()
	fmt.Fprintf(progress, "  stopped replica %d (the active one) holding about %.0f messages\n", f.victim+1, f.kill.heldAtKill)
}

// watch notes when the other replicas last redelivered, once one is stopped.
func (f *benchFailover) watch(r *benchReplicas) {
	if f.killed.IsZero() {
		return
	}
	if red := r.redeliveriesBut(f.victim); red > f.lastRedeliveries {
		f.lastRedeliveries, f.lastRedeliveryAt = red, time.Now()
	}
}

// report is what the stop of a replica cost, every result in; nil when
// none was stopped.
func (f *benchFailover) report(r *benchReplicas, results *resultTally, ackWait time.Duration) *killReport {
	if f.killed.IsZero() {
		return nil
	}
	f.watch(r) // a redelivery may land after the last poll
	k := f.kill
	k.lastRedelivery = f.lastRedeliveryAt.Sub(f.killed)
	k.allResults = results.lastAt().Sub(f.killed)
	k.duplicates = results.duplicates()
	k.ackWait = ackWait
	return &k
}
