package worker

import (
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Budgets learned from the exchange.
//
// A budget of Bybit's starts at the figure in force (Config.Limits: Bybit's
// documented base tier unless set) and, after every answer, paces to what
// X-Bapi-Limit says for that endpoint and category, up as well as down: an
// account above the base tier (VIP, Pro) runs at its real limit without
// hand-tuning. An explicit entry (Config.LimitCeilings, BYBIT_LIMITS; an
// account's limits) is a ceiling the learned limit never exceeds, for
// operators who keep part of the budget for other clients.
//
// Bybit's rate-limit table gives linear and inverse one figure spanning both
// columns (the VIP table calls it "Futures"): one budget per UID for both
// categories of an endpoint, so they share one pacer here.

// budgetKey is the pacer a limit key (endpoint/category) spends: inverse
// shares linear's.
func budgetKey(budget string) string {
	if endpoint, ok := strings.CutSuffix(budget, "/inverse"); ok {
		return endpoint + "/linear"
	}
	return budget
}

// budgetKeys are the limit keys that spend the pacer of key.
func budgetKeys(key string) []string {
	if endpoint, ok := strings.CutSuffix(key, "/linear"); ok {
		return []string{key, endpoint + "/inverse"}
	}
	return []string{key}
}

// budgetMaker is what building a budget's pacer works with: this replica's
// share of every budget (BYBIT_LIMIT_SHARE; 1 in a pinned fleet), the clock,
// the logger and the budget-limit gauge (by group, endpoint and category).
type budgetMaker struct {
	share float64
	now   func() time.Time
	log   *slog.Logger
	limit *prometheus.GaugeVec
}

// newBudget builds the pacer of one limit key of an account's limit group:
// its start is the figure in force for budget (the other key's when it has
// none), its ceiling the smallest explicit one of the keys that share it
// (after the share); it follows
// Bybit's headers and reports every change of its limit as a metric and a
// log line.
func (m budgetMaker) newBudget(a *account, budget string) *pacer {
	key := budgetKey(budget)
	start, ceiling := a.limits[budget], 0 // 0: unlimited, none
	for _, k := range budgetKeys(key) {
		if n := a.limits[k]; start == 0 && n > 0 {
			start = n
		}
		if n := a.ceilings[k]; n > 0 && (ceiling == 0 || n < ceiling) {
			ceiling = n
		}
	}
	if ceiling > 0 && (start == 0 || start > ceiling) {
		start = ceiling
	}
	p := newPacer(Rate{N: shareOf(start, m.share), Per: time.Second}, m.now)
	p.share = m.share
	p.learn = true
	if ceiling > 0 {
		p.ceiling = shareOf(ceiling, m.share)
	}
	endpoint, category, _ := strings.Cut(key, "/")
	group := a.group
	set := func(limit int) {
		for _, k := range budgetKeys(key) {
			_, c, _ := strings.Cut(k, "/")
			m.limit.WithLabelValues(group, endpoint, categoryLabel(c)).Set(float64(limit))
		}
	}
	if !p.off {
		set(p.limit)
	}
	p.onLimit = func(limit int) {
		set(limit)
		m.log.Info("budget limit learned from Bybit", "group", group, "endpoint", endpoint, "category", category,
			"limit", limit, "ceiling", p.ceiling)
	}
	return p
}
