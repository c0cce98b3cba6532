//go:build !linux

package storage

// TrimMappings is a no-op where MADV_PAGEOUT does not exist.
func TrimMappings(dir string) (int64, error) { return 0, nil }
