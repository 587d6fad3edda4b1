package worker

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// Bybit's Disconnect Cancel All, the dead-man switch: with an account's
// window set, Bybit cancels every open futures, spot and option order of
// the account when every private WebSocket connection of it that
// subscribed the dcp topics has been gone for the window. Every replica's
// private stream subscribes them, so the switch fires only when every
// replica is gone (or cut off from Bybit) — not on a restart or a
// reconnect inside the window.

// dcpState is an account's switch.
type dcpState struct {
	window time.Duration
	// set: the window was set for every product; readBack: Bybit's
	// query-dcp-info reported it ON with that window for every product.
	set, readBack atomic.Bool
	detail        atomic.Pointer[string]
}

func newDCPState(window time.Duration) *dcpState {
	if window == 0 {
		return nil
	}
	return &dcpState{window: window}
}

func checkDCPWindow(d time.Duration, confirm bool, wsURL, name string) []error {
	switch {
	case d == 0:
		return nil
	case d%time.Second != 0 || d < bybit.MinDCPWindow*time.Second || d > bybit.MaxDCPWindow*time.Second:
		return []error{fmt.Errorf("%s must be whole seconds from %ds to %ds, not %v", name, bybit.MinDCPWindow, bybit.MaxDCPWindow, d)}
	case !confirm || wsURL == "":
		return []error{fmt.Errorf("%s needs CONFIRM=true and a private WebSocket URL: the dcp topics are subscribed on the confirmations' private stream", name)}
	}
	return nil
}

// dcpTopics are the topics an account's private stream subscribes.
func dcpTopics(a *account) []string {
	if a.dcp == nil {
		return nil
	}
	topics := make([]string, len(bybit.DCPProducts))
	for i, p := range bybit.DCPProducts {
		topics[i] = bybit.DCPTopic(p)
	}
	return topics
}

// reconnectWait caps the private stream's reconnect backoff (0: the
// stream's default) so that a replica whose stream drops comes back within
// the account's window: a third of it (the backoff's jitter adds at most
// half of that), at most 30 s.
func reconnectWait(a *account) time.Duration {
	if a.dcp == nil {
		return 0
	}
	return min(30*time.Second, a.dcp.window/3)
}

// armDCP sets the account's window for every product and reads it back.
// Neither Bybit refusing the window nor a read-back that does not show it
// (Bybit says a change takes a while: "query or set again after 10
// seconds") stops the start — the cancels matter more than the switch —
// but the switch is then reported not armed, with why.
func (w *Worker) armDCP(ctx context.Context, a *account) {
	if err := w.tryArmDCP(ctx, a); err != nil {
		w.log.Error("dead-man switch NOT armed: Bybit refused its window", "account", a.name, "error", err)
		w.setDCPDetail(a, "not armed: "+err.Error())
	}
}

func (w *Worker) tryArmDCP(ctx context.Context, a *account) error {
	secs := int(a.dcp.window / time.Second)
	for _, p := range bybit.DCPProducts {
		err := w.retryTransient(ctx, "setting the Disconnect Cancel All window", a, func() error {
			_, err := a.client.SetDCP(ctx, p, secs)
			return err
		})
		if err != nil {
			return fmt.Errorf("account %s: setting Bybit's Disconnect Cancel All window (%ds) for %s: %w (Bybit switches DCP on for an account on request)", a.name, secs, p, err)
		}
	}
	a.dcp.set.Store(true)
	var infos []bybit.DCPInfo
	err := w.retryTransient(ctx, "reading the Disconnect Cancel All window back", a, func() error {
		var err error
		infos, err = a.client.DCPInfos(ctx)
		return err
	})
	if err != nil {
		w.log.Warn("Disconnect Cancel All window set, but reading it back failed", "account", a.name, "error", err)
		w.setDCPDetail(a, "window set, not read back: "+err.Error())
		return nil
	}
	got := map[string]bybit.DCPInfo{}
	for _, d := range infos {
		got[d.Product] = d
		w.metrics.dcpWindow.WithLabelValues(a.name, d.Product).Set(float64(d.WindowSeconds))
	}
	var off []string
	for _, p := range bybit.DCPProducts {
		switch d, ok := got[p]; {
		case !ok:
			off = append(off, p+" (not listed)")
		case d.Status != "ON" || d.WindowSeconds != secs:
			off = append(off, fmt.Sprintf("%s (%s, %ds)", p, d.Status, d.WindowSeconds))
		}
	}
	sort.Strings(off)
	if len(off) > 0 {
		w.log.Warn("Bybit's query-dcp-info does not show the Disconnect Cancel All window yet for every product; it may take effect later, or Bybit has not switched DCP on for them",
			"account", a.name, "window", a.dcp.window, "notShown", strings.Join(off, ", "))
		w.setDCPDetail(a, "window set, not shown by query-dcp-info for "+strings.Join(off, ", "))
		return nil
	}
	a.dcp.readBack.Store(true)
	w.setDCPDetail(a, "")
	return nil
}

// retryTransient makes call until it succeeds, fails for good (a
// permanent answer) or ctx ends: network trouble at start is waited out,
// as the key check does.
func (w *Worker) retryTransient(ctx context.Context, what string, a *account, call func() error) error {
	retry := newRetryBackoff()
	for {
		err := call()
		if err == nil || bybit.ClassOf(err) == bybit.ClassPermanent || ctx.Err() != nil {
			return err
		}
		w.log.Warn(what+" failed; retrying", "account", a.name, "error", err)
		if sleepCtx(ctx, retry.NextBackOff()) != nil {
			return err
		}
	}
}

func (w *Worker) setDCPDetail(a *account, s string) { a.dcp.detail.Store(&s) }

// dcpArmed reports whether the account's switch is armed now: the window
// set and read back, and this replica's private stream up with the dcp
// topics subscribed (the stream counts as up only once subscribed).
func (w *Worker) dcpArmed(a *account) (bool, string) {
	if a.dcp == nil {
		return false, "off"
	}
	if d := a.dcp.detail.Load(); d != nil && *d != "" {
		return false, *d
	}
	if !a.dcp.readBack.Load() {
		return false, "window not set yet"
	}
	if w.confirm != nil {
		if as := w.confirm.streams[a.name]; as != nil && as.subscribed.Load() {
			return true, fmt.Sprintf("armed, window %v", a.dcp.window)
		}
	}
	return false, "private stream down: this replica does not hold the switch"
}

// observeDCP updates the armed gauge of an account.
func (w *Worker) observeDCP(a *account) {
	if a.dcp == nil {
		return
	}
	armed, _ := w.dcpArmed(a)
	w.metrics.dcpArmed.WithLabelValues(a.name).Set(boolGauge(armed))
}

// DCPStatus describes every account's dead-man switch for /readyz: ""
// when no account arms one.
func (w *Worker) DCPStatus() string {
	var parts []string
	for _, name := range sortedAccountNames(w.accounts) {
		a := w.accounts[name]
		if a.dcp == nil {
			continue
		}
		_, s := w.dcpArmed(a)
		parts = append(parts, "account "+name+": "+s)
	}
	if len(parts) == 0 {
		return ""
	}
	return "dead-man switch (Bybit DCP): " + strings.Join(parts, "; ")
}

func sortedAccountNames(m map[string]*account) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
