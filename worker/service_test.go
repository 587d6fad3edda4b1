package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// withSync turns the sync service's subjects on.
func (e *env) withSync() {
	e.cfg.SyncCancelSubject = "orders.sync.cancel"
	e.cfg.SyncCancelAllSubject = "orders.sync.cancel-all"
	e.cfg.SyncMaxTimeout = 30 * time.Second
}

// syncSetup is setup with the sync service's subjects on.
func syncSetup(t *testing.T) *env {
	t.Helper()
	e := setup(t, bybittest.Options{})
	e.withSync()
	return e
}

// syncRunning is syncSetup with a worker and then the sync service running.
func syncRunning(t *testing.T) *env {
	t.Helper()
	e := syncSetup(t)
	e.start()
	e.service()
	return e
}

// storedBeforeTheService starts a worker, has it store the result of a
// cancel (requestID, published with msgID) of a new order, and only then
// starts the sync service; it returns the order and the request's sequence.
func (e *env) storedBeforeTheService(requestID, msgID string) (bybittest.Order, uint64) {
	e.t.Helper()
	e.start()
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	seq := e.publish(cancelBody(o, false, requestID), msgID)
	e.waitResults(1)
	e.service()
	return o, seq
}

// service starts the sync service on its own connection until the test
// ends.
func (e *env) service() *worker.Service {
	e.t.Helper()
	nc, err := nats.Connect(e.ns.ClientURL())
	require.NoError(e.t, err)
	e.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(e.t, err)
	s, err := worker.NewService(worker.ServiceConfig{Conn: nc, JS: js, Worker: e.cfg, Logger: e.cfg.Logger})
	require.NoError(e.t, err)
	require.NoError(e.t, s.Start(context.Background()))
	e.t.Cleanup(s.Stop)
	return s
}

// syncRequest sends a request to a sync endpoint and returns the reply.
func (e *env) syncRequest(subject string, body any, hdr nats.Header) *nats.Msg {
	e.t.Helper()
	data, ok := body.([]byte)
	if !ok {
		if s, isStr := body.(string); isStr {
			data = []byte(s)
		} else {
			var err error
			data, err = json.Marshal(body)
			require.NoError(e.t, err)
		}
	}
	reply, err := e.nc.RequestMsg(&nats.Msg{Subject: subject, Data: data, Header: hdr}, waitFor)
	require.NoError(e.t, err)
	return reply
}

func requireAnswer(t *testing.T, reply *nats.Msg) messages.Answer {
	t.Helper()
	require.Empty(t, reply.Header.Get(micro.ErrorCodeHeader), "an answer, not an error: %s", reply.Header.Get(micro.ErrorHeader))
	a, err := messages.DecodeAnswer(reply.Data)
	require.NoError(t, err)
	seq, err := strconv.ParseUint(reply.Header.Get(messages.HeaderRequestSeq), 10, 64)
	require.NoError(t, err)
	require.Equal(t, seq, a.RequestSeq, "the reply names the request's sequence")
	return a
}

func TestSyncCancelIsAnsweredWithItsStoredResult(t *testing.T) {
	t.Parallel()
	e := syncRunning(t)
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	reply := e.syncRequest("orders.sync.cancel", cancelBody(o, false, "sync-1"), nil)
	a := requireAnswer(t, reply)
	require.Equal(t, messages.StatusCancelled, a.Status)
	require.Equal(t, "sync-1", a.RequestID)
	require.Equal(t, o.OrderID, a.OrderID)
	require.NotEmpty(t, reply.Header.Get(nats.MsgIdHdr), "a generated Nats-Msg-Id, for a retry")
	stored := e.waitResults(1)[a.RequestSeq]
	require.Equal(t, stored, a.Result, "the reply is the stored result")
	require.Nil(t, a.Confirmations)
	// The request itself is in the stream, as a published one would be.
	msg, err := e.js.Stream(context.Background(), e.cfg.Stream)
	require.NoError(t, err)
	raw, err := msg.GetMsg(context.Background(), a.RequestSeq)
	require.NoError(t, err)
	require.Equal(t, e.cfg.CancelSubject, raw.Subject)
	require.Equal(t, reply.Header.Get(nats.MsgIdHdr), raw.Header.Get(nats.MsgIdHdr))
	st, _ := e.ex.Order("linear", o.OrderID)
	require.Equal(t, "Cancelled", st.Status)
}

// consumerNames lists the stream's consumers.
func (e *env) consumerNames() []string {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), e.cfg.Stream)
	require.NoError(e.t, err)
	l := s.ConsumerNames(context.Background())
	var names []string
	for n := range l.Name() {
		names = append(names, n)
	}
	require.NoError(e.t, l.Err())
	return names
}

func TestSyncServiceStopLeavesNoConsumerOnTheServer(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	e.start()
	before := e.consumerNames()
	s := e.service()
	require.Len(t, e.consumerNames(), len(before)+1, "the service follows the results with a consumer of its own")
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	require.Equal(t, messages.StatusCancelled, requireAnswer(t, e.syncRequest("orders.sync.cancel", cancelBody(o, false, "stop-1"), nil)).Status)
	s.Stop()
	require.ElementsMatch(t, before, e.consumerNames(), "a stopped sync service leaves no consumer behind")
}

func TestSyncCancelAllIsAnsweredWithItsResult(t *testing.T) {
	t.Parallel()
	e := syncRunning(t)
	o1 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	o2 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	a := requireAnswer(t, e.syncRequest("orders.sync.cancel-all", map[string]string{"category": "linear", "symbol": "BTCUSDT"}, nil))
	require.Equal(t, messages.StatusCancelled, a.Status, "%+v", a)
	require.Len(t, a.Orders, 2)
	for _, o := range []bybittest.Order{o1, o2} {
		st, _ := e.ex.Order("linear", o.OrderID)
		require.Equal(t, "Cancelled", st.Status)
	}
}

func TestSyncCancelIsAnsweredByTheOtherReplica(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	// Replica A only answers (its worker is not pulling); replica B's
	// worker stores every result.
	e.service()
	e.start()
	for i := range 3 {
		o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
		a := requireAnswer(t, e.syncRequest("orders.sync.cancel", cancelBody(o, false, fmt.Sprint("r", i)), nil))
		require.Equal(t, messages.StatusCancelled, a.Status)
		require.Equal(t, o.OrderID, a.OrderID)
	}
}

func TestSyncDuplicateIsAnsweredFromTheOriginalsResult(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	// Stored before the service started: found in the stream.
	o1, before := e.storedBeforeTheService("before", "id-before")
	o2 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	first := requireAnswer(t, e.syncRequest("orders.sync.cancel", cancelBody(o2, false, "after"), nats.Header{nats.MsgIdHdr: []string{"id-after"}}))
	require.Equal(t, messages.StatusCancelled, first.Status)

	for _, c := range []struct {
		id   string
		seq  uint64
		body string
	}{
		{"id-before", before, `{"category":"linear","symbol":"BTCUSDT","orderId":"` + o1.OrderID + `","requestId":"before"}`},
		// Encoded anew: other key order and spacing, the same message.
		{"id-after", first.RequestSeq, `{"requestId": "after", "orderId": "` + o2.OrderID + `", "symbol": "BTCUSDT", "category": "linear"}`},
	} {
		// A retry after a lost reply: same Nats-Msg-Id, same body.
		reply := e.syncRequest("orders.sync.cancel", c.body, nats.Header{nats.MsgIdHdr: []string{c.id}})
		a := requireAnswer(t, reply)
		require.Equal(t, "true", reply.Header.Get(messages.HeaderDuplicate))
		require.Equal(t, c.seq, a.RequestSeq, "the original's result")
		require.Equal(t, messages.StatusCancelled, a.Status, "not a second cancel (not_open)")
	}
	e.requireSettledWith(2, "a duplicate is neither stored nor answered twice")
}

func TestSyncInvalidBodyIsAnsweredInvalid(t *testing.T) {
	t.Parallel()
	e := syncRunning(t)
	a := requireAnswer(t, e.syncRequest("orders.sync.cancel", `{"category":"linear","symbol":"BTCUSDT"}`, nil))
	require.Equal(t, messages.StatusInvalid, a.Status)
	require.Contains(t, a.Error, "orderId")
	require.Equal(t, 0, e.cancelRequests(), "nothing sent to the exchange")
}

func TestSyncTimeoutIsA504NamingTheSequence(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	e.service() // no worker: nothing answers
	reply := e.syncRequest("orders.sync.cancel", `{"category":"linear","symbol":"BTCUSDT","orderId":"o-1"}`, nats.Header{messages.HeaderTimeout: []string{"200ms"}})
	require.Equal(t, "504", reply.Header.Get(micro.ErrorCodeHeader))
	seq := reply.Header.Get(messages.HeaderRequestSeq)
	require.NotEmpty(t, seq)
	require.Contains(t, reply.Header.Get(micro.ErrorHeader), "at sequence "+seq)

	// The request stays stored: a worker started later answers it.
	e.start()
	got := e.waitResults(1)
	n, _ := strconv.ParseUint(seq, 10, 64)
	require.Contains(t, got, n)
}

func TestSyncBadHeadersAndStoppingAreClearErrors(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	s := e.service()
	body := `{"category":"linear","symbol":"BTCUSDT","orderId":"o-1"}`
	for hdr, value := range map[string]string{messages.HeaderTimeout: "soon", messages.HeaderWait: "forever"} {
		reply := e.syncRequest("orders.sync.cancel", body, nats.Header{hdr: []string{value}})
		require.Equal(t, "400", reply.Header.Get(micro.ErrorCodeHeader))
		require.Contains(t, reply.Header.Get(micro.ErrorHeader), hdr)
	}
	reply := e.syncRequest("orders.sync.cancel", body, nats.Header{messages.HeaderWait: []string{messages.WaitConfirmed}})
	require.Equal(t, "400", reply.Header.Get(micro.ErrorCodeHeader), "confirmations are off")

	// A stop answers the waiting request at once, naming its sequence.
	replies := make(chan *nats.Msg, 1)
	go func() {
		m, err := e.nc.RequestMsg(&nats.Msg{Subject: "orders.sync.cancel", Data: []byte(body), Header: nats.Header{messages.HeaderTimeout: []string{"30s"}}}, waitFor)
		if err == nil {
			replies <- m
		}
		close(replies)
	}()
	require.Eventually(t, func() bool { return waitingOf(t, e.nc, "cancel") == 1 }, waitFor, 10*time.Millisecond)
	s.Stop()
	m := <-replies
	require.NotNil(t, m)
	require.Equal(t, "503", m.Header.Get(micro.ErrorCodeHeader))
	require.Contains(t, m.Header.Get(micro.ErrorHeader), "at sequence "+m.Header.Get(messages.HeaderRequestSeq))
	ok, why := s.Status()
	require.False(t, ok)
	require.Equal(t, "stopped", why)
}

func TestSyncRefusedPublishIsA503(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	e.service()
	// The stream no longer captures the input subject.
	s, err := e.js.Stream(context.Background(), e.cfg.Stream)
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	cfg.Subjects = []string{e.cfg.CancelAllSubject, e.cfg.AckSubject, e.cfg.RejectedSubject}
	_, err = e.js.UpdateStream(context.Background(), cfg)
	require.NoError(t, err)
	reply := e.syncRequest("orders.sync.cancel", `{"category":"linear","symbol":"BTCUSDT","orderId":"o-1"}`, nil)
	require.Equal(t, "503", reply.Header.Get(micro.ErrorCodeHeader))
	require.Contains(t, reply.Header.Get(micro.ErrorHeader), "orders.cancel")
}

func TestSyncConfirmedWaitCarriesTheConfirmations(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	e.withConfirm(10 * time.Second)
	e.start()
	e.service()
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	filled := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", FillOnCancel: true})
	for _, c := range []struct {
		o      bybittest.Order
		status string
	}{{o, "Cancelled"}, {filled, "Filled"}} {
		a := requireAnswer(t, e.syncRequest("orders.sync.cancel", cancelBody(c.o, false, ""), nats.Header{messages.HeaderWait: []string{messages.WaitConfirmed}}))
		require.Equal(t, messages.StatusCancelled, a.Status)
		require.Len(t, a.Confirmations, 1)
		require.Equal(t, c.status, a.Confirmations[0].OrderStatus)
		require.True(t, a.Confirmations[0].Final)
		require.Equal(t, a.RequestSeq, a.Confirmations[0].RequestSeq)
	}
	// Without the header the reply does not wait for them.
	o3 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	a := requireAnswer(t, e.syncRequest("orders.sync.cancel", cancelBody(o3, false, ""), nil))
	require.Nil(t, a.Confirmations)
}

func TestThousandConcurrentSyncCancelsAreEachAnsweredOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{AutoCreate: true, Limits: map[string]int{}})
	e.withSync()
	e.cfg.Limits = map[string]int{}
	e.start()
	e.service()
	const n = 1000
	inbox := nats.NewInbox()
	var mu sync.Mutex
	replies := map[string][]*nats.Msg{}
	sub, err := e.nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		mu.Lock()
		replies[m.Subject] = append(replies[m.Subject], m)
		mu.Unlock()
	})
	require.NoError(t, err)
	require.NoError(t, sub.SetPendingLimits(-1, -1))
	for i := range n {
		body := fmt.Sprintf(`{"category":"linear","symbol":"BTCUSDT","orderId":"o-%d"}`, i)
		require.NoError(t, e.nc.PublishMsg(&nats.Msg{Subject: "orders.sync.cancel", Reply: fmt.Sprintf("%s.%d", inbox, i), Data: []byte(body),
			Header: nats.Header{messages.HeaderTimeout: []string{"30s"}}}))
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(replies) == n
	}, 2*waitFor, 10*time.Millisecond, "replies: %d, stats %+v", func() int { mu.Lock(); defer mu.Unlock(); return len(replies) }(), statsOf(t, e.nc, "cancel"))
	// Every reply the service sent has arrived once the stats say so.
	require.Eventually(t, func() bool { return answeredOf(t, e.nc, "cancel") == n }, waitFor, 10*time.Millisecond)
	require.NoError(t, e.nc.Flush())
	mu.Lock()
	defer mu.Unlock()
	seqs := map[uint64]bool{}
	for subj, ms := range replies {
		require.Len(t, ms, 1, "one reply to %s", subj)
		a := requireAnswer(t, ms[0])
		require.Equal(t, messages.StatusCancelled, a.Status)
		require.False(t, seqs[a.RequestSeq])
		seqs[a.RequestSeq] = true
		var i int
		_, err := fmt.Sscanf(subj[len(inbox)+1:], "%d", &i)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint("o-", i), a.OrderID, "each reply answers its own request")
	}
}

func TestSyncServiceStaysOffWhenTheStreamCapturesItsSubject(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	// An operator's stream that captures everything under orders.>: the
	// stream set up for the test is changed in place (a delete and a create
	// of the same name races the file store on a loaded machine), and
	// without the worker's tag it is the operator's.
	_, err := e.js.UpdateStream(context.Background(), operatorStream(t, e, "orders.>"))
	require.NoError(t, err)
	e.start()
	s := e.service()
	ok, why := s.Status()
	require.False(t, ok)
	require.Contains(t, why, "captures orders.sync.cancel, orders.sync.cancel-all")
	require.Contains(t, e.logs.String(), "sync service off")
	_, err = e.nc.Request("$SRV.PING."+worker.ServiceName, nil, time.Second)
	require.ErrorIs(t, err, nats.ErrNoResponders, "the service is not registered")
	// The cancel path runs as before.
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	seq := e.publish(cancelBody(o, false, ""), "")
	require.Equal(t, messages.StatusCancelled, e.waitResults(1)[seq].Status)
}

func TestSyncServiceAnswersMicroInfoAndStats(t *testing.T) {
	t.Parallel()
	e := syncRunning(t)
	reply, err := e.nc.Request("$SRV.INFO."+worker.ServiceName, nil, waitFor)
	require.NoError(t, err)
	var info micro.Info
	require.NoError(t, json.Unmarshal(reply.Data, &info))
	require.Equal(t, worker.ServiceName, info.Name)
	subjects := map[string]string{}
	for _, ep := range info.Endpoints {
		subjects[ep.Name] = ep.Subject
		require.Equal(t, worker.ServiceQueueGroup, ep.QueueGroup)
	}
	require.Equal(t, map[string]string{"cancel": "orders.sync.cancel", "cancel-all": "orders.sync.cancel-all"}, subjects)

	e.syncRequest("orders.sync.cancel", `{"category":"linear","symbol":"BTCUSDT","orderId":"o-1"}`, nats.Header{messages.HeaderTimeout: []string{"100ms"}})
	require.Eventually(t, func() bool { return answeredOf(t, e.nc, "cancel") == 1 }, waitFor, 10*time.Millisecond)
}

type syncStats struct {
	Answered int64 `json:"answered"`
	Timeouts int64 `json:"timeouts"`
	Waiting  int64 `json:"waiting"`
}

func statsOf(t *testing.T, nc *nats.Conn, endpoint string) syncStats {
	t.Helper()
	reply, err := nc.Request("$SRV.STATS."+worker.ServiceName, nil, waitFor)
	require.NoError(t, err)
	var st micro.Stats
	require.NoError(t, json.Unmarshal(reply.Data, &st))
	for _, ep := range st.Endpoints {
		if ep.Name == endpoint {
			var s syncStats
			require.NoError(t, json.Unmarshal(ep.Data, &s))
			return s
		}
	}
	t.Fatalf("no endpoint %s in %s", endpoint, reply.Data)
	return syncStats{}
}

func answeredOf(t *testing.T, nc *nats.Conn, endpoint string) int64 {
	s := statsOf(t, nc, endpoint)
	return s.Answered + s.Timeouts
}

func waitingOf(t *testing.T, nc *nats.Conn, endpoint string) int64 {
	return statsOf(t, nc, endpoint).Waiting
}

// A Nats-Msg-Id reused for another order (a strategy whose counter
// restarted) is refused with a 409 naming the sequence that holds the
// other message: never answered with the first order's result as if the
// second were cancelled.
func TestSyncMsgIDReusedForAnotherOrderIsNotAnsweredWithTheFirstOrdersResult(t *testing.T) {
	t.Parallel()
	e := syncRunning(t)
	o1 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	o2 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	hdr := nats.Header{nats.MsgIdHdr: []string{"strategy-1"}}
	first := requireAnswer(t, e.syncRequest("orders.sync.cancel", cancelBody(o1, false, ""), hdr))
	require.Equal(t, messages.StatusCancelled, first.Status)

	reply := e.syncRequest("orders.sync.cancel", cancelBody(o2, false, ""), hdr)
	require.Equal(t, "409", reply.Header.Get(micro.ErrorCodeHeader), "the reply to a cancel of %s: %s", o2.OrderID, reply.Data)
	require.Equal(t, fmt.Sprintf("Nats-Msg-Id strategy-1 was used at sequence %d for another message; nothing was stored", first.RequestSeq),
		reply.Header.Get(micro.ErrorHeader))
	st2, _ := e.ex.Order("linear", o2.OrderID)
	require.Equal(t, "New", st2.Status, "o2 was never cancelled")
	e.requireSettledWith(1)
}

// A Nats-Msg-Id the stream holds for a message that is not this endpoint's
// request — a result's (the worker's own prefixes), or a request on another
// input subject — is never waited on as if it were this request (a 504
// naming a sequence that does not hold it).
func TestSyncMsgIDOfAResultIsNotWaitedOnAsARequest(t *testing.T) {
	t.Parallel()
	e := syncRunning(t)
	o1 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	first := requireAnswer(t, e.syncRequest("orders.sync.cancel", cancelBody(o1, false, ""), nil))
	o2 := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	for _, id := range []string{messages.ResultMsgID(first.RequestSeq), "progress:1:x:1", "confirmed:1:o-1"} {
		reply := e.syncRequest("orders.sync.cancel", cancelBody(o2, false, ""), nats.Header{
			nats.MsgIdHdr: []string{id}, messages.HeaderTimeout: []string{"500ms"},
		})
		require.Equal(t, "400", reply.Header.Get(micro.ErrorCodeHeader), "%s: %s", id, reply.Header.Get(micro.ErrorHeader))
		require.Contains(t, reply.Header.Get(micro.ErrorHeader), "Nats-Msg-Id "+id)
	}
	// The id of a cancel-all, sent again as a cancel.
	all := requireAnswer(t, e.syncRequest("orders.sync.cancel-all", `{"category":"linear","symbol":"ETHUSDT"}`, nats.Header{nats.MsgIdHdr: []string{"desk-9"}}))
	reply := e.syncRequest("orders.sync.cancel", cancelBody(o2, false, ""), nats.Header{nats.MsgIdHdr: []string{"desk-9"}, messages.HeaderTimeout: []string{"500ms"}})
	require.Equal(t, "409", reply.Header.Get(micro.ErrorCodeHeader), "%s", reply.Header.Get(micro.ErrorHeader))
	require.Contains(t, reply.Header.Get(micro.ErrorHeader), fmt.Sprintf("was used at sequence %d for another message", all.RequestSeq))
	st2, _ := e.ex.Order("linear", o2.OrderID)
	require.Equal(t, "New", st2.Status, "o2 was never cancelled")
}

// Looking up a result stored before the service started (a retry of an old
// request) leaves no consumer on the server: a retry storm after a restart
// would otherwise pile up consumers for 5 minutes each (and hit a stream's
// MaxConsumers, which the worker's own consumers need).
func TestSyncLookupOfAnOlderResultLeavesNoConsumerBehind(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	o, seq := e.storedBeforeTheService("", "old-1")
	consumers := func() int {
		s, err := e.js.Stream(context.Background(), e.cfg.Stream)
		require.NoError(t, err)
		info, err := s.Info(context.Background())
		require.NoError(t, err)
		return info.State.Consumers
	}
	// The worker's durable, the test's result reader and the service's
	// follower.
	require.Eventually(t, func() bool { return consumers() == 3 }, waitFor, 10*time.Millisecond)
	for range 5 {
		a := requireAnswer(t, e.syncRequest("orders.sync.cancel", cancelBody(o, false, ""), nats.Header{nats.MsgIdHdr: []string{"old-1"}}))
		require.Equal(t, seq, a.RequestSeq)
	}
	require.Eventually(t, func() bool { return consumers() == 3 }, 10*time.Second, 50*time.Millisecond,
		"consumers left on the server after 5 lookups: %d (an ordered consumer's InactiveThreshold is 5 minutes)", consumers())
}

// Many lookups of older results at once (a retry storm after a restart) are
// each answered with their own result.
func TestSyncConcurrentLookupsOfOlderResultsAreEachAnswered(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	e.start()
	const n = 20
	bodies := make([]map[string]string, n)
	seqs := make([]uint64, n)
	for i := range n {
		o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
		bodies[i] = cancelBody(o, false, "")
		seqs[i] = e.publish(bodies[i], fmt.Sprint("old-", i))
	}
	e.waitResults(n)
	e.service()
	var wg sync.WaitGroup
	replies := make([]*nats.Msg, n)
	for i := range n {
		wg.Go(func() {
			data, _ := json.Marshal(bodies[i])
			m, err := e.nc.RequestMsg(&nats.Msg{Subject: "orders.sync.cancel", Data: data, Header: nats.Header{nats.MsgIdHdr: []string{fmt.Sprint("old-", i)}}}, waitFor)
			if err == nil {
				replies[i] = m
			}
		})
	}
	wg.Wait()
	for i, m := range replies {
		require.NotNil(t, m, "reply %d", i)
		a := requireAnswer(t, m)
		require.Equal(t, seqs[i], a.RequestSeq)
		require.Equal(t, bodies[i]["orderId"], a.OrderID)
	}
}

// `nats micro stats` shows num_errors: a 400 (a bad header) is counted there,
// not only in the endpoint's data.
func TestSyncMicroStatsCountTheServicesErrors(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	e.service()
	reply := e.syncRequest("orders.sync.cancel", `{"category":"linear","symbol":"BTCUSDT","orderId":"o-1"}`, nats.Header{messages.HeaderTimeout: []string{"soon"}})
	require.Equal(t, "400", reply.Header.Get(micro.ErrorCodeHeader))
	// micro counts a request after its handler returns, which is after the
	// reply went out: wait for the count rather than race it.
	var m *nats.Msg
	var st micro.Stats
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		m, err = e.nc.Request("$SRV.STATS."+worker.ServiceName, nil, waitFor)
		require.NoError(c, err)
		st = micro.Stats{}
		require.NoError(c, json.Unmarshal(m.Data, &st))
		n := -1
		for _, ep := range st.Endpoints {
			if ep.Name == "cancel" {
				n = ep.NumRequests
			}
		}
		assert.NotEqual(c, 0, n, "the cancel endpoint has not counted the request yet")
	}, waitFor, 10*time.Millisecond)
	found := false
	for _, ep := range st.Endpoints {
		if ep.Name == "cancel" {
			found = true
			require.EqualValues(t, 1, ep.NumRequests)
			require.EqualValues(t, 1, ep.NumErrors, "num_errors of `nats micro stats` after a 400 (last_error %q, data %s)", ep.LastError, ep.Data)
			require.Contains(t, ep.LastError, messages.HeaderTimeout)
		}
	}
	require.True(t, found, "%s", m.Data)
}

// An operator's stream without the cancel-all subject: cancel-all intake is
// off, so the sync cancel-all endpoint is off too (nothing answers it, and
// Status says why); the cancel endpoint runs.
func TestSyncCancelAllIsOffWhenTheStreamDoesNotStoreCancelAlls(t *testing.T) {
	t.Parallel()
	e := syncSetup(t)
	_, err := e.js.UpdateStream(context.Background(), operatorStream(t, e, e.cfg.CancelSubject, e.cfg.AckSubject, e.cfg.RejectedSubject))
	require.NoError(t, err)
	e.start()
	s := e.service()
	ok, why := s.Status()
	require.True(t, ok, why)
	require.Equal(t, []string{"sync cancel-all off: stream ORDERS does not capture orders.cancel-all (cancel-all requests are off)"}, s.Off())
	_, err = e.nc.Request("orders.sync.cancel-all", []byte(`{"category":"linear","symbol":"BTCUSDT"}`), time.Second)
	require.ErrorIs(t, err, nats.ErrNoResponders, "no endpoint answers cancel-all")
	o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	require.Equal(t, messages.StatusCancelled, requireAnswer(t, e.syncRequest("orders.sync.cancel", cancelBody(o, false, ""), nil)).Status)
}

// operatorStream is the test's stream as an operator would have it: the given
// subjects, without the worker's metadata tag.
func operatorStream(t *testing.T, e *env, subjects ...string) jetstream.StreamConfig {
	t.Helper()
	st, err := e.js.Stream(context.Background(), e.cfg.Stream)
	require.NoError(t, err)
	cfg := st.CachedInfo().Config
	cfg.Subjects, cfg.Metadata = subjects, nil
	return cfg
}
