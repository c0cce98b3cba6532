package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

// startAdmin serves the local admin API on a unix socket in data_dir. The
// socket is mode 0600: whoever can use it can read and change the queue.
func (d *Daemon) startAdmin() error {
	path := AdminSocket(d.cfg)
	// A socket left by a killed daemon blocks bind; nobody can be serving on
	// it because we hold the spool lock.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	mux := http.NewServeMux()
	d.registerQueueOps(mux)
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.spool.Stats())
	})
	d.admin = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := d.admin.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("admin api", "err", err)
		}
	}()
	d.onStop(func(ctx context.Context) error {
		err := d.admin.Shutdown(ctx)
		os.Remove(path)
		return err
	})
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// AdminClient talks to a running daemon's admin socket.
func AdminClient(socket string) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", socket)
		}},
	}
}
