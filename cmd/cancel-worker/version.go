package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Set with -ldflags "-X main.version=v1.2.3 -X main.revision=abc123
// -X main.buildDate=2026-12-01T09:00:00Z" when the build has no VCS
// information (a source tarball, a Docker build without .git). Empty: taken
// from the binary's build information.
var (
	version   string
	revision  string
	buildDate string
)

// buildInfo is what `cancel-worker version` prints and the worker logs at
// start.
type buildInfo struct {
	Version   string // module version, or (devel)
	Revision  string // VCS commit; +dirty when built from modified sources
	BuildDate string // commit time (VCS) or the -ldflags date
	GoVersion string
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: "(devel)", Revision: "unknown", BuildDate: "unknown", GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" {
			b.Version = v
		}
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.time":
				b.BuildDate = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && b.Revision != "unknown" {
			b.Revision += "+dirty"
		}
	}
	if version != "" {
		b.Version = version
	}
	if revision != "" {
		b.Revision = revision
	}
	if buildDate != "" {
		b.BuildDate = buildDate
	}
	return b
}

func (b buildInfo) String() string {
	return fmt.Sprintf("cancel-worker %s (revision %s, built %s, %s)", b.Version, b.Revision, b.BuildDate, b.GoVersion)
}

func (b buildInfo) logAttrs() []any {
	return []any{"version", b.Version, "revision", b.Revision, "buildDate", b.BuildDate, "goVersion", b.GoVersion}
}

// register exports cancel_worker_build_info{version,revision,goversion} 1.
func (b buildInfo) register(reg prometheus.Registerer) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "cancel_worker_build_info",
		Help:        "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	})
	g.Set(1)
	reg.MustRegister(g)
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	if err := newFlagSet("version", commandAbout("version"), stderr).parse(args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, readBuildInfo())
	return nil
}
