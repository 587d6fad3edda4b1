package messages

// Subjects say where the messages travel: the JetStream stream that keeps
// requests and results, the worker's durable consumer on it, and the
// subject of each kind of message. The worker, its commands and the replay
// reader share this one description; the defaults are the worker's
// (worker.DefaultConfig: ORDERS, cancel-worker, orders.cancel, ...).
type Subjects struct {
	// Stream holds requests and results.
	Stream string
	// Consumer is the worker's durable pull consumer; several processes
	// may share it.
	Consumer string
	// CancelSubject takes Cancel requests, CancelAllSubject CancelAll
	// requests.
	CancelSubject    string
	CancelAllSubject string
	// CancelAllProgressSubject prefixes the progress records of running
	// cancel-alls, one subject per request: <subject>.<requestSeq>.
	CancelAllProgressSubject string
	// AckSubject receives the Results of cancels the exchange
	// acknowledged; RejectedSubject every other final Result.
	AckSubject      string
	RejectedSubject string
	// ConfirmedSubject receives one Confirmation per order of an
	// acknowledged cancel.
	ConfirmedSubject string
	// SyncCancelSubject and SyncCancelAllSubject are the request/reply
	// subjects of the sync service's cancel and cancel-all endpoints
	// (empty: the endpoint is off). They are outside the stream: a
	// request there is stored on CancelSubject or CancelAllSubject.
	SyncCancelSubject    string
	SyncCancelAllSubject string
}
