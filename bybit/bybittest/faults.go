package bybittest

import (
	"net"
	"net/http"
	"time"
)

// Fault makes the next matching cancel request misbehave. Faults are used in
// the order they were injected, one per request.
type Fault struct {
	// Match selects the requests the fault applies to; nil matches all.
	Match func(category, symbol, orderID, orderLinkID string) bool
	// Apply cancels the order before answering (a lost response when
	// combined with Hangup or a Delay past the client's timeout).
	Apply bool
	// Delay holds the answer (until the client gives up, if longer).
	Delay time.Duration
	// Hangup closes the connection without an answer.
	Hangup bool
	// Status and Body replace the answer with a raw HTTP one.
	Status int
	Body   string
	// RetCode and RetMsg answer with an error envelope.
	RetCode int
	RetMsg  string
}

// InjectFault queues faults for the next matching cancel requests.
func (e *Exchange) InjectFault(f ...Fault) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = append(e.faults, f...)
}

func (e *Exchange) nextFault(b cancelBody) (Fault, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, f := range e.faults {
		if f.Match == nil || f.Match(b.Category, b.Symbol, b.OrderID, b.OrderLinkID) {
			e.faults = append(e.faults[:i:i], e.faults[i+1:]...)
			return f, true
		}
	}
	return Fault{}, false
}

// SetCancelAllFails makes cancel-all answer retCode 0 with success "0".
func (e *Exchange) SetCancelAllFails(fail bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cancelAllFails = fail
}

// serveFault answers with the fault; false means the fault only delayed the
// answer and the normal one follows.
func (e *Exchange) serveFault(w http.ResponseWriter, r *http.Request, q Request, f Fault) bool {
	if f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			q.RetCode, q.HTTPStatus = -2, 0
			e.record(r, q)
			return true
		}
	}
	switch {
	case f.Hangup:
		q.RetCode = -3
		e.record(r, q)
		hangup(w)
		return true
	case f.Status != 0:
		q.HTTPStatus, q.RetCode = f.Status, -1
		e.record(r, q)
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(f.Status)
		_, _ = w.Write([]byte(f.Body))
		return true
	case f.RetCode != 0:
		e.writeEnvelope(w, r, q, f.RetCode, f.RetMsg, nil, nil)
		return true
	}
	return false
}

func hangup(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a reset, not a polite close
	}
	_ = conn.Close()
}
