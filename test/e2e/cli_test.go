package e2e

import (
	"os/exec"
	"testing"

	"github.com/mxbox/mxbox/test/harness"
)

// runCLI runs the built mxbox binary and returns its output; a non-zero
// exit fails the test.
func runCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(harness.Binary(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("mxbox %v: %v\n%s", args, err, out)
	}
	return string(out)
}
