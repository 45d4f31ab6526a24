package buildinfo

import (
	"runtime"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	s := String()
	for _, want := range []string{"funnel " + Version, "commit " + Commit, runtime.Version()} {
		if !strings.Contains(s, want) {
			t.Errorf("String() = %q, lacks %q", s, want)
		}
	}
	if GoVersion() != runtime.Version() {
		t.Errorf("GoVersion() = %q", GoVersion())
	}
}
