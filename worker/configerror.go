package worker

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// Field names a field of Config, or of one of its Accounts, the way Go
// spells it. The names an operator knows (environment variables, the keys
// of an accounts file) are the command's: it renders a ConfigError with
// them (ConfigError.Text).
type Field struct {
	// Account is the key in Config.Accounts of an Account's field; empty
	// for a field of Config itself.
	Account string
	// Name is the field's path in Config or in Account: "AckWait",
	// "DCPWindow", "Subjects.CancelSubject"; empty with Account set: the
	// account itself.
	Name string
}

func (f Field) String() string {
	switch {
	case f.Account == "":
		return f.Name
	case f.Name == "":
		return fmt.Sprintf("Accounts[%q]", f.Account)
	}
	return fmt.Sprintf("Accounts[%q].%s", f.Account, f.Name)
}

func field(name string) Field { return Field{Name: name} }

func accountField(account, name string) Field { return Field{Account: account, Name: name} }

// inAccount is a field named within the account a problem is about: by its
// own name, without the account's.
type inAccount Field

// FieldProblem is one thing wrong with a configuration: the field it is
// about, and what is wrong, naming that field and any other it involves.
type FieldProblem struct {
	Field  Field
	format string
	args   []any // a Field or an inAccount is named when the text is made
}

func problem(f Field, format string, args ...any) FieldProblem {
	return FieldProblem{Field: f, format: format, args: args}
}

// Text says what is wrong, each field named by name.
func (p FieldProblem) Text(name func(Field) string) string {
	args := make([]any, len(p.args))
	for i, a := range p.args {
		switch a := a.(type) {
		case Field:
			args[i] = name(a)
		case inAccount:
			full, account := name(Field(a)), name(Field{Account: a.Account})
			rest, ok := strings.CutPrefix(full, account)
			if !ok {
				rest = full
			}
			args[i] = strings.TrimLeft(rest, ". ")
		default:
			args[i] = a
		}
	}
	return fmt.Sprintf(p.format, args...)
}

func (p FieldProblem) String() string { return p.Text(Field.String) }

// ConfigError is what Validate (and a stream that does not fit the
// configuration) reports: every problem found, one a line. Its Error names
// the fields as Go spells them; a command renders it with its own names
// (Text).
type ConfigError struct {
	Problems []FieldProblem
}

func (e *ConfigError) Error() string { return e.Text(Field.String) }

// Text is the error with each field named by name.
func (e *ConfigError) Text(name func(Field) string) string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.Text(name)
	}
	return strings.Join(lines, "\n")
}

// validation collects what Validate finds in c.
type validation struct {
	c        Config
	problems []FieldProblem
}

func (v *validation) add(p ...FieldProblem) { v.problems = append(v.problems, p...) }

func (v *validation) check(ok bool, f Field, format string, args ...any) {
	if !ok {
		v.add(problem(f, format, args...))
	}
}

// value is the Config field of that name (a typo panics in every test
// that validates).
func (v *validation) value(name string) reflect.Value {
	f := reflect.ValueOf(v.c).FieldByName(name)
	if !f.IsValid() {
		panic("worker: Config has no field " + name)
	}
	return f
}

// nonEmpty: each of the named string fields is set.
func (v *validation) nonEmpty(names ...string) {
	for _, name := range names {
		v.check(v.value(name).String() != "", field(name), "%s must not be empty", field(name))
	}
}

// positive: each of the named duration fields is above zero.
func (v *validation) positive(names ...string) {
	for _, name := range names {
		d := time.Duration(v.value(name).Int())
		v.check(d > 0, field(name), "%s must be positive, not %v", field(name), d)
	}
}

// err is nil or the ConfigError of what was found.
func (v *validation) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	return &ConfigError{Problems: v.problems}
}
