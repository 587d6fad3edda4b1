package worker

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// DefaultAccount names the account of the BYBIT_API_KEY credentials.
const DefaultAccount = "default"

// account is a configured account and its clock-resync state.
type account struct {
	name   string
	client *bybit.Client
	limits map[string]int
	// ceilings are the explicit limits (Config.LimitCeilings, the
	// account's own Limits) the learned ones never exceed.
	ceilings map[string]int
	group    string
	wsURL    string
	// dcp is the account's dead-man switch; nil: not armed.
	dcp *dcpState

	syncMu   sync.Mutex
	lastSync time.Time

	// checkErr is why the start-up check failed; nil once it passed, or a
	// later answer of Bybit's proved the key works (guarded by checkMu;
	// unchecked is set while it is not nil).
	checkMu   sync.Mutex
	checkErr  error
	unchecked atomic.Bool
}

// startupProblem returns why the account's start-up check failed, nil if it
// passed or the key has worked since.
func (a *account) startupProblem() error {
	if !a.unchecked.Load() {
		return nil
	}
	a.checkMu.Lock()
	defer a.checkMu.Unlock()
	return a.checkErr
}

func sortedAccountNames(m map[string]*account) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
