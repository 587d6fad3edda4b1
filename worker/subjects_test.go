package worker_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// withHedgeAccount adds account "hedge" with its own subjects.
func (e *env) withHedgeAccount() {
	e.t.Helper()
	c, err := bybit.NewClient(bybit.Options{BaseURL: e.srv.URL, APIKey: "hedge-key", APISecret: "hedge-secret"})
	require.NoError(e.t, err)
	e.cfg.Accounts = map[string]worker.Account{"hedge": {Client: c, Subjects: worker.AccountSubjects{
		CancelSubject: "orders.hedge.cancel", CancelAllSubject: "orders.hedge.cancel-all",
		SyncCancelSubject: "orders.sync.hedge.cancel", SyncCancelAllSubject: "orders.sync.hedge.cancel-all",
	}}}
}

var hedgeExchange = bybittest.Options{Accounts: []bybittest.Account{
	{APIKey: bybittest.DemoAPIKey, Secret: bybittest.DemoAPISecret, UID: "demo"},
	{APIKey: "hedge-key", Secret: "hedge-secret", UID: "hedge"},
}}

func TestRequestsOnAnAccountsSubjectAreForThatAccount(t *testing.T) {
	t.Parallel()
	e := setup(t, hedgeExchange)
	e.withHedgeAccount()
	e.start()
	// The worker's stream set-up captures the account's subjects.
	st, err := e.js.Stream(context.Background(), e.cfg.Stream)
	require.NoError(t, err)
	require.Subset(t, st.CachedInfo().Config.Subjects, []string{"orders.hedge.cancel", "orders.hedge.cancel-all"})

	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	ack, err := e.js.Publish(context.Background(), "orders.hedge.cancel", []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"`+o.OrderID+`"}`))
	require.NoError(t, err)
	conflict, err := e.js.Publish(context.Background(), "orders.hedge.cancel", []byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"x","account":"default"}`))
	require.NoError(t, err)
	same, err := e.js.Publish(context.Background(), "orders.hedge.cancel-all", []byte(`{"category":"linear","symbol":"ETHUSDT","account":"hedge"}`))
	require.NoError(t, err)
	got := e.waitResults(3)

	r := got[ack.Sequence]
	require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
	require.Equal(t, "hedge", r.Account)
	keys := map[string]int{}
	for _, q := range e.ex.Requests() {
		if isCancel(q) || q.Path == "/v5/order/cancel-all" {
			keys[q.APIKey]++
		}
	}
	require.Equal(t, map[string]int{"hedge-key": 2}, keys, "sent with the hedge account's key only")

	require.Equal(t, messages.StatusInvalid, got[conflict.Sequence].Status)
	require.Contains(t, got[conflict.Sequence].Error, `account "default" conflicts with the subject, which is account "hedge"'s`)
	require.Equal(t, messages.StatusCancelled, got[same.Sequence].Status, "%+v", got[same.Sequence])
	require.Empty(t, got[same.Sequence].Orders, "nothing was open")
	require.Equal(t, "hedge", got[same.Sequence].Account)
}

func TestSyncCancelOnAnAccountsSubject(t *testing.T) {
	t.Parallel()
	e := setup(t, hedgeExchange)
	e.withSync()
	e.withHedgeAccount()
	e.start()
	e.service()
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	a := requireAnswer(t, e.syncRequest("orders.sync.hedge.cancel", cancelBody(o, false, ""), nil))
	require.Equal(t, messages.StatusCancelled, a.Status)
	require.Equal(t, "hedge", a.Account)
	stream, err := e.js.Stream(context.Background(), e.cfg.Stream)
	require.NoError(t, err)
	raw, err := stream.GetMsg(context.Background(), a.RequestSeq)
	require.NoError(t, err)
	require.Equal(t, "orders.hedge.cancel", raw.Subject, "published to the account's input subject")

	reply := e.syncRequest("orders.sync.hedge.cancel", map[string]string{"category": "linear", "symbol": "BTCUSDT", "orderId": "x", "account": "default"}, nats.Header{})
	require.Equal(t, messages.StatusInvalid, requireAnswer(t, reply).Status)
}

func TestAccountSubjectsMustDiffer(t *testing.T) {
	t.Parallel()
	e := setup(t, hedgeExchange)
	e.withHedgeAccount()
	a := e.cfg.Accounts["hedge"]
	a.Subjects.CancelSubject = e.cfg.CancelSubject
	a.Subjects.SyncCancelAllSubject = "orders.sync.>"
	e.cfg.Accounts["hedge"] = a
	err := e.cfg.Validate()
	require.ErrorContains(t, err, `CancelSubject and Accounts["hedge"].Subjects.CancelSubject are both "orders.cancel"`)
	require.ErrorContains(t, err, `subject "orders.sync.>" must be a literal subject`)
}

// An account with its own subjects exists so that NATS permissions say who
// may cancel for it; a request on the shared subject that names the account
// must not go around them.
func TestASharedSubjectCannotCancelForAnAccountWithItsOwnSubjects(t *testing.T) {
	t.Parallel()
	e := setup(t, hedgeExchange)
	e.withHedgeAccount()
	e.start()
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	ack, err := e.js.Publish(context.Background(), e.cfg.CancelSubject,
		[]byte(`{"category":"linear","symbol":"BTCUSDT","orderId":"`+o.OrderID+`","account":"hedge"}`))
	require.NoError(t, err)
	all, err := e.js.Publish(context.Background(), e.cfg.CancelAllSubject, []byte(`{"category":"linear","symbol":"BTCUSDT","account":"hedge"}`))
	require.NoError(t, err)
	got := e.waitResults(2)
	r := got[ack.Sequence]
	require.Equal(t, messages.StatusInvalid, r.Status, "a request on %s for account hedge (own subject orders.hedge.cancel) was %s with hedge's key", e.cfg.CancelSubject, r.Status)
	require.Contains(t, r.Error, `account "hedge" takes requests on orders.hedge.cancel`)
	require.Equal(t, messages.StatusInvalid, got[all.Sequence].Status)
	require.Contains(t, got[all.Sequence].Error, "orders.hedge.cancel-all")
	st, _ := e.ex.Order("linear", o.OrderID)
	require.Equal(t, "New", st.Status)
}
