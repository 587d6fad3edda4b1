package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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

func checkDCPWindow(d time.Duration, confirm bool, wsURL string, f Field) []FieldProblem {
	switch {
	case d == 0:
		return nil
	case d%time.Second != 0 || d < bybit.MinDCPWindow*time.Second || d > bybit.MaxDCPWindow*time.Second:
		return []FieldProblem{problem(f, "%s must be whole seconds from %ds to %ds, not %v", f, bybit.MinDCPWindow, bybit.MaxDCPWindow, d)}
	case !confirm || wsURL == "":
		return []FieldProblem{problem(f, "%s needs %s=true and a private WebSocket URL: the dcp topics are subscribed on the confirmations' private stream", f, field("Confirm"))}
	}
	return nil
}

// topics are the topics an account's private stream subscribes for its
// switch (none without one).
func (d *dcpState) topics() []string {
	if d == nil {
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
func (d *dcpState) reconnectWait() time.Duration {
	if d == nil {
		return 0
	}
	return min(30*time.Second, d.window/3)
}

// dcpArming is what setting an account's switch works with: the logger and
// the gauge of the windows Bybit reports (by account and product).
type dcpArming struct {
	log    *slog.Logger
	window *prometheus.GaugeVec
}

// arm sets the window of account name's switch d for every product through
// client, and reads it back. Neither Bybit refusing the window nor a
// read-back that does not show it (Bybit says a change takes a while:
// "query or set again after 10 seconds") stops the start — the cancels
// matter more than the switch — but the switch is then reported not armed,
// with why.
func (m dcpArming) arm(ctx context.Context, name string, client *bybit.Client, d *dcpState) {
	if err := m.tryArm(ctx, name, client, d); err != nil {
		m.log.Error("dead-man switch NOT armed: Bybit refused its window", "account", name, "error", err)
		d.setDetail("not armed: " + err.Error())
	}
}

func (m dcpArming) tryArm(ctx context.Context, name string, client *bybit.Client, d *dcpState) error {
	secs := int(d.window / time.Second)
	for _, p := range bybit.DCPProducts {
		err := retryTransient(ctx, m.log, "setting the Disconnect Cancel All window", name, func() error {
			_, err := client.SetDCP(ctx, p, secs)
			return err
		})
		if err != nil {
			return fmt.Errorf("account %s: setting Bybit's Disconnect Cancel All window (%ds) for %s: %w (Bybit switches DCP on for an account on request)", name, secs, p, err)
		}
	}
	d.set.Store(true)
	var infos []bybit.DCPInfo
	err := retryTransient(ctx, m.log, "reading the Disconnect Cancel All window back", name, func() error {
		var err error
		infos, err = client.DCPInfos(ctx)
		return err
	})
	if err != nil {
		m.log.Warn("Disconnect Cancel All window set, but reading it back failed", "account", name, "error", err)
		d.setDetail("window set, not read back: " + err.Error())
		return nil
	}
	got := map[string]bybit.DCPInfo{}
	for _, info := range infos {
		got[info.Product] = info
		m.window.WithLabelValues(name, info.Product).Set(float64(info.WindowSeconds))
	}
	var off []string
	for _, p := range bybit.DCPProducts {
		switch info, ok := got[p]; {
		case !ok:
			off = append(off, p+" (not listed)")
		case info.Status != "ON" || info.WindowSeconds != secs:
			off = append(off, fmt.Sprintf("%s (%s, %ds)", p, info.Status, info.WindowSeconds))
		}
	}
	sort.Strings(off)
	if len(off) > 0 {
		m.log.Warn("Bybit's query-dcp-info does not show the Disconnect Cancel All window yet for every product; it may take effect later, or Bybit has not switched DCP on for them",
			"account", name, "window", d.window, "notShown", strings.Join(off, ", "))
		d.setDetail("window set, not shown by query-dcp-info for " + strings.Join(off, ", "))
		return nil
	}
	d.readBack.Store(true)
	d.setDetail("")
	return nil
}

// retryTransient makes call for account name until it succeeds, fails for
// good (a permanent answer) or ctx ends: network trouble at start is
// waited out, as the key check does.
func retryTransient(ctx context.Context, log *slog.Logger, what, name string, call func() error) error {
	retry := newRetryBackoff()
	for {
		err := call()
		if err == nil || bybit.ClassOf(err) == bybit.ClassPermanent || ctx.Err() != nil {
			return err
		}
		log.Warn(what+" failed; retrying", "account", name, "error", err)
		if sleepCtx(ctx, retry.NextBackOff()) != nil {
			return err
		}
	}
}

func (d *dcpState) setDetail(s string) { d.detail.Store(&s) }

// status reports whether the switch is armed now: the window set and read
// back, and this replica's private stream up with the dcp topics
// subscribed (subscribed: the stream counts as up only once subscribed);
// and if not, why.
func (d *dcpState) status(subscribed bool) (bool, string) {
	if d == nil {
		return false, "off"
	}
	if detail := d.detail.Load(); detail != nil && *detail != "" {
		return false, *detail
	}
	if !d.readBack.Load() {
		return false, "window not set yet"
	}
	if subscribed {
		return true, fmt.Sprintf("armed, window %v", d.window)
	}
	return false, "private stream down: this replica does not hold the switch"
}
