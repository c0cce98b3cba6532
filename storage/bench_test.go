package storage

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// BenchmarkPutConcurrent shows group commit: with fsync on, messages per
// second grow with the number of concurrent writers because Badger commits
// their transactions in shared batches with one sync each.
func BenchmarkPutConcurrent(b *testing.B) {
	body := make([]byte, 4096)
	for _, writers := range []int{1, 4, 20, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const perWriter = 200
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				start := time.Now()
				var wg sync.WaitGroup
				for w := 0; w < writers; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; i < perWriter; i++ {
							if _, err := s.Put(env("a@x.org", "b@y.org"), body); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(writers*perWriter)/time.Since(start).Seconds(), "msg/s")
			}
		})
	}
}
