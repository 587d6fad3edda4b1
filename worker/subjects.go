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

// namedSubject is a subject setting and its field.
type namedSubject struct {
	subject string
	field   Field
}

// namedSubjects lists every subject setting with its field, for the
// every-subject-differs check: the inputs and the results first.
func (c Config) namedSubjects() []namedSubject {
	out := []namedSubject{{c.CancelSubject, field("CancelSubject")}, {c.CancelAllSubject, field("CancelAllSubject")},
		{c.AckSubject, field("AckSubject")}, {c.RejectedSubject, field("RejectedSubject")},
		{c.SyncCancelSubject, field("SyncCancelSubject")}, {c.SyncCancelAllSubject, field("SyncCancelAllSubject")}}
	if c.Confirm {
		out = append(out, namedSubject{c.ConfirmedSubject, field("ConfirmedSubject")})
	}
	for _, name := range c.accountNames() {
		out = append(out, c.Accounts[name].Subjects.named(name)...)
	}
	return out
}

// named lists the account's subjects with their fields.
func (s AccountSubjects) named(account string) []namedSubject {
	return []namedSubject{
		{s.CancelSubject, accountField(account, "Subjects.CancelSubject")},
		{s.CancelAllSubject, accountField(account, "Subjects.CancelAllSubject")},
		{s.SyncCancelSubject, accountField(account, "Subjects.SyncCancelSubject")},
		{s.SyncCancelAllSubject, accountField(account, "Subjects.SyncCancelAllSubject")},
	}
}

// checkAccountSubjects: an account's sync subject publishes to its input
// subject, so it needs one; no subject holds a wildcard.
func (c Config) checkAccountSubjects() []FieldProblem {
	var out []FieldProblem
	for _, name := range c.accountNames() {
		acct, named := accountField(name, ""), c.Accounts[name].Subjects.named(name)
		for i, input := range named[:2] {
			if sync := named[i+2]; sync.subject != "" && input.subject == "" {
				out = append(out, problem(acct, "%s: %s needs a %s to publish to", acct, inAccount(sync.field), inAccount(input.field)))
			}
		}
		for _, n := range named {
			if strings.ContainsAny(n.subject, "*> \t") {
				out = append(out, problem(acct, "%s: subject %q must be a literal subject (no wildcards or spaces)", acct, n.subject))
			}
		}
	}
	return out
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

// checkProgressSubject keeps progress records apart from requests and
// results: the worker's consumer, replay and the confirmer read those
// subjects, and must never take a progress record for one of them.
func (c Config) checkProgressSubject() (FieldProblem, bool) {
	p, f := c.CancelAllProgressSubject, field("CancelAllProgressSubject")
	if p == "" {
		return FieldProblem{}, false
	}
	if strings.ContainsAny(p, "*> \t") || slices.Contains(strings.Split(p, "."), "") {
		return problem(f, "%s %q must be a literal subject (no wildcards, no empty tokens)", f, p), true
	}
	// The inputs and the results (namedSubjects' first four), and the
	// confirmations even when they are off.
	others := append(slices.Clip(c.namedSubjects()[:4]), namedSubject{c.ConfirmedSubject, field("ConfirmedSubject")})
	for _, s := range others {
		if s.subject != "" && (s.subject == p || subjectMatches(c.progressSubjects(), s.subject)) {
			return problem(f, "%s %q overlaps %s %q: progress records (%s) must not share a subject with requests or results", f, p, s.field, s.subject, c.progressSubjects()), true
		}
	}
	return FieldProblem{}, false
}
