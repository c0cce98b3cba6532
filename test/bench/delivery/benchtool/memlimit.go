package main

import (
	"os"
	"runtime/debug"

	"github.com/mxbox/mxbox/firmware/config"
)

// applyMemoryLimit does what mxbox serve does with memory_limit.
func applyMemoryLimit(cfg *config.Config) {
	if cfg.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(cfg.MemoryLimit))
	}
}
