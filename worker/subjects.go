package worker

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// AccountSubjects are an account's own subjects: a request on one of them is
// for that account, so NATS permissions can say who may cancel for it. Empty
// fields: the account has no such subject (its requests use the shared ones
// with the account field).
type AccountSubjects struct {
	// CancelSubject and CancelAllSubject are input subjects the stream
	// captures and the consumer filters, like NATS_CANCEL_SUBJECT.
	CancelSubject    string
	CancelAllSubject string
	// SyncCancelSubject and SyncCancelAllSubject are sync endpoints that
	// publish to the account's input subjects (they need them).
	SyncCancelSubject    string
	SyncCancelAllSubject string
}

// route is what a request's subject says: cancel or cancel-all, and the
// account it is for ("" : the body's account field decides).
type route struct {
	all     bool
	account string
	// own, on a shared subject: the accounts that have their own subject
	// of this kind, and that subject. A request here naming one of them is
	// invalid: it would go around the NATS permissions on that subject.
	own map[string]string
}

// accountNames are the names of accounts that have subjects, sorted.
func (c Config) accountNames() []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(c.Accounts)) {
		if c.Accounts[name].Subjects != (AccountSubjects{}) {
			out = append(out, name)
		}
	}
	return out
}

// accountInputSubjects are the accounts' own input subjects.
func (c Config) accountInputSubjects() []string {
	var out []string
	for _, name := range c.accountNames() {
		s := c.Accounts[name].Subjects
		for _, subj := range []string{s.CancelSubject, s.CancelAllSubject} {
			if subj != "" {
				out = append(out, subj)
			}
		}
	}
	return out
}

// routes maps every input subject to what it means.
func (c Config) routes() map[string]route {
	shared, sharedAll := route{own: map[string]string{}}, route{all: true, own: map[string]string{}}
	out := map[string]route{}
	for _, name := range c.accountNames() {
		s := c.Accounts[name].Subjects
		if s.CancelSubject != "" {
			out[s.CancelSubject] = route{account: name}
			shared.own[name] = s.CancelSubject
		}
		if s.CancelAllSubject != "" {
			out[s.CancelAllSubject] = route{all: true, account: name}
			sharedAll.own[name] = s.CancelAllSubject
		}
	}
	out[c.CancelSubject], out[c.CancelAllSubject] = shared, sharedAll
	return out
}

// namedSubjects lists every subject setting with its name, for the
// every-subject-differs check.
func (c Config) namedSubjects() [][2]string {
	out := [][2]string{{c.CancelSubject, "NATS_CANCEL_SUBJECT"}, {c.CancelAllSubject, "NATS_CANCEL_ALL_SUBJECT"}, {c.AckSubject, "NATS_ACK_SUBJECT"}, {c.RejectedSubject, "NATS_REJECTED_SUBJECT"},
		{c.SyncCancelSubject, "NATS_SYNC_CANCEL_SUBJECT"}, {c.SyncCancelAllSubject, "NATS_SYNC_CANCEL_ALL_SUBJECT"}}
	if c.Confirm {
		out = append(out, [2]string{c.ConfirmedSubject, "NATS_CONFIRMED_SUBJECT"})
	}
	for _, name := range c.accountNames() {
		s := c.Accounts[name].Subjects
		prefix := fmt.Sprintf("BYBIT_ACCOUNTS_FILE: account %q ", name)
		out = append(out, [2]string{s.CancelSubject, prefix + "cancelSubject"}, [2]string{s.CancelAllSubject, prefix + "cancelAllSubject"},
			[2]string{s.SyncCancelSubject, prefix + "syncCancelSubject"}, [2]string{s.SyncCancelAllSubject, prefix + "syncCancelAllSubject"})
	}
	return out
}

// checkAccountSubjects: an account's sync subject publishes to its input
// subject, so it needs one; no subject holds a wildcard.
func (c Config) checkAccountSubjects() []error {
	var errs []error
	for _, name := range c.accountNames() {
		s := c.Accounts[name].Subjects
		prefix := fmt.Sprintf("BYBIT_ACCOUNTS_FILE: account %q: ", name)
		if s.SyncCancelSubject != "" && s.CancelSubject == "" {
			errs = append(errs, fmt.Errorf("%ssyncCancelSubject needs a cancelSubject to publish to", prefix))
		}
		if s.SyncCancelAllSubject != "" && s.CancelAllSubject == "" {
			errs = append(errs, fmt.Errorf("%ssyncCancelAllSubject needs a cancelAllSubject to publish to", prefix))
		}
		for _, subj := range []string{s.CancelSubject, s.CancelAllSubject, s.SyncCancelSubject, s.SyncCancelAllSubject} {
			if strings.ContainsAny(subj, "*> \t") {
				errs = append(errs, fmt.Errorf("%ssubject %q must be a literal subject (no wildcards or spaces)", prefix, subj))
			}
		}
	}
	return errs
}

// forAccount applies an account subject's account to a request: a body that
// names another account is invalid, and so is a request on a shared subject
// for an account that has its own subject of that kind.
func forAccount(rt route, bodyAccount string) (string, error) {
	if rt.account == "" {
		if own, ok := rt.own[bodyAccount]; ok {
			return "", fmt.Errorf("%w: account %q takes requests on %s, not on the shared subject", messages.ErrInvalid, bodyAccount, own)
		}
		return bodyAccount, nil
	}
	if bodyAccount != "" && bodyAccount != rt.account {
		return "", fmt.Errorf("%w: account %q conflicts with the subject, which is account %q's", messages.ErrInvalid, bodyAccount, rt.account)
	}
	return rt.account, nil
}
