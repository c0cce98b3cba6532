//go:build !linux

package storage

import "log/slog"

// TrimMappings is a no-op where MADV_PAGEOUT does not exist.
func TrimMappings(dir string) (int64, error) { return 0, nil }

// WatchMappings is a no-op where the Linux mapping advice does not apply.
func WatchMappings(dir string, trimAbove int64, log *slog.Logger) (stop func()) { return func() {} }

const walkTrimAbove = 8 << 20

func trimIfResident(dir string, limit int64) {}
