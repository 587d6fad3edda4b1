package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// flagSet is a command's flags with its help text: what the command does,
// then its flags. Parse errors come back as one line that points at --help;
// the help itself is printed only when asked for.
type flagSet struct {
	*flag.FlagSet
	about string
	out   io.Writer
	// preamble is printed between the description and the flags.
	preamble func(io.Writer)
}

// newFlagSet makes the flags of `cancel-worker name`; about is the
// description its --help starts with. out receives the help (the dispatcher
// passes stdout when help was asked for).
func newFlagSet(name, about string, out io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &flagSet{FlagSet: fs, about: about, out: out}
}

// parse parses args; -h/--help prints the help and returns flag.ErrHelp.
// Positional arguments are refused.
func (f *flagSet) parse(args []string) error {
	err := f.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.printHelp(f.out)
		return err
	case err != nil:
		return fmt.Errorf("%s: %v (see 'cancel-worker %s --help')", f.Name(), strings.Replace(err.Error(), " -", " --", 1), f.Name())
	case f.NArg() > 0:
		return fmt.Errorf("%s: unexpected argument %q (see 'cancel-worker %s --help')", f.Name(), f.Arg(0), f.Name())
	}
	return nil
}

func (f *flagSet) printHelp(w io.Writer) {
	fmt.Fprintf(w, "Usage: cancel-worker %s [flags]\n\n%s\n", f.Name(), strings.TrimSpace(f.about))
	if f.preamble != nil {
		fmt.Fprintln(w)
		f.preamble(w)
	}
	n := 0
	f.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintln(w, "\nFlags:")
	f.VisitAll(func(fl *flag.Flag) {
		kind, usage := flag.UnquoteUsage(fl)
		if _, ok := fl.Value.(settingFlag); ok && kind == "value" {
			kind = "string"
		}
		if isBoolFlag(fl) {
			kind = ""
		}
		line := "  --" + fl.Name
		if kind != "" {
			line += " " + kind
		}
		fmt.Fprintf(w, "%s\n      %s", line, usage)
		switch {
		case isBoolFlag(fl) && fl.DefValue == "true":
			fmt.Fprintf(w, " (default true; --%s=false turns it off)", fl.Name)
		case fl.DefValue != "" && fl.DefValue != "0" && fl.DefValue != "false":
			fmt.Fprintf(w, " (default %s)", fl.DefValue)
		}
		fmt.Fprintln(w)
	})
}

func isBoolFlag(fl *flag.Flag) bool {
	b, ok := fl.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// settingFlag is the flag twin of a setting: a string, or for an on/off
// setting a boolean flag (--confirm, --confirm=false). The value is checked
// later, with the setting's name in the error.
type settingFlag struct {
	value   *string
	boolean bool
}

func (s settingFlag) String() string {
	if s.value == nil {
		return ""
	}
	return *s.value
}

func (s settingFlag) Set(v string) error { *s.value = v; return nil }

func (s settingFlag) IsBoolFlag() bool { return s.boolean }

// wantsHelp reports whether args ask for a command's help.
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help", "--h":
			return true
		}
	}
	return false
}
