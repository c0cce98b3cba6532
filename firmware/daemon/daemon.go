// Package daemon owns the lifecycle of a running mxbox: it builds every
// subsystem from the config, starts them in dependency order (spool first,
// SMTP last, so nothing is accepted before it can be stored), serves the
// local admin API on a unix socket, and stops them in reverse order.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/firmware/delivery"
	"github.com/mxbox/mxbox/firmware/resolver"
	"github.com/mxbox/mxbox/firmware/smtpd"
	"github.com/mxbox/mxbox/storage"
)

// Options are injected by main (and tests).
type Options struct {
	Logger  *slog.Logger
	Now     func() time.Time
	Version string
}

// Daemon is a running mxbox.
type Daemon struct {
	cfg   *config.Config
	opts  Options
	log   *slog.Logger
	spool *storage.Spool
	dns   *resolver.Resolver
	deliv *delivery.Runner
	smtp  *smtpd.Server
	admin *http.Server
	stops []func(context.Context) error // in stop order, filled as things start
}

// SpoolDir is where the Badger spool lives under data_dir.
func SpoolDir(cfg *config.Config) string { return filepath.Join(cfg.DataDir, "spool") }

// AdminSocket is the local admin API's unix socket.
func AdminSocket(cfg *config.Config) string { return filepath.Join(cfg.DataDir, "admin.sock") }

// Start builds and starts every subsystem. On error, whatever started is stopped.
func Start(cfg *config.Config, opts Options) (d *Daemon, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	d = &Daemon{cfg: cfg, opts: opts, log: opts.Logger}
	// The soft memory limit comes first: everything after allocates. An
	// operator's GOMEMLIMIT in the environment wins.
	if cfg.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(cfg.MemoryLimit))
	}
	defer func() {
		if err != nil {
			d.Stop(context.Background())
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data_dir %s: %w", cfg.DataDir, err)
	}
	d.spool, err = storage.Open(SpoolDir(cfg), storage.Options{Logger: d.log.With("sys", "spool"), Now: opts.Now})
	if err != nil {
		return nil, err
	}
	d.onStop(func(context.Context) error { return d.spool.Close() })
	d.startTrimmer()
	st := d.spool.Stats()
	d.log.Info("spool open", "dir", SpoolDir(cfg), "messages", st.Messages, "bytes", st.Bytes)

	// The resolver comes before delivery (it resolves next hops in-process)
	// and keeps its cache snapshot in the spool's blob store.
	d.dns, err = resolver.New(cfg.DNS, resolver.Options{
		Logger:        d.log.With("sys", "dns"),
		Now:           opts.Now,
		Store:         d.spool,
		RelayPrefixes: cfg.SMTP.RelayPrefixes(),
	})
	if err != nil {
		return nil, err
	}
	if err := d.dns.Start(); err != nil {
		return nil, err
	}
	d.onStop(d.dns.Close)
	if udp, _ := d.dns.Addr(); udp != nil {
		d.log.Info("listening", "service", "dns", "addr", udp.String())
	}

	d.deliv, err = delivery.New(cfg, d.spool, d.dns, delivery.Options{Logger: d.log.With("sys", "delivery"), Now: opts.Now})
	if err != nil {
		return nil, err
	}
	d.deliv.Start()
	d.onStop(d.deliv.Close)

	if err := d.startAdmin(); err != nil {
		return nil, err
	}

	d.smtp, err = smtpd.New(cfg, d.spool, smtpd.Options{
		Logger:    d.log.With("sys", "smtpd"),
		Now:       opts.Now,
		TLSDir:    cfg.DataDir,
		Headroom:  storage.Headroom,
		BeforePut: d.deliv.Admit,
		OnQueued:  d.deliv.Queued,
	})
	if err != nil {
		return nil, err
	}
	if err := d.smtp.Start(); err != nil {
		return nil, err
	}
	d.onStop(func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, cfg.SMTP.ShutdownTimeout.D())
		defer cancel()
		return d.smtp.Shutdown(ctx)
	})
	d.log.Info("mxbox started", "version", opts.Version, "hostname", cfg.Hostname, "config", cfg.Source)
	return d, nil
}

// startTrimmer keeps Badger's mapped files advised (storage.WatchMappings):
// single-page faults so commits write only what changed, and sealed files
// paged out once more than 8 MB of them are resident.
func (d *Daemon) startTrimmer() {
	stop := storage.WatchMappings(SpoolDir(d.cfg), 8<<20, d.log.With("sys", "spool"))
	d.onStop(func(context.Context) error { stop(); return nil })
}

// onStop registers a stop function; they run last-registered first.
func (d *Daemon) onStop(f func(context.Context) error) {
	d.stops = append([]func(context.Context) error{f}, d.stops...)
}

// Stop shuts everything down in reverse start order: SMTP drains first so
// in-flight messages are committed before the spool closes.
func (d *Daemon) Stop(ctx context.Context) error {
	var errs []error
	for _, f := range d.stops {
		if err := f(ctx); err != nil {
			errs = append(errs, err)
			d.log.Error("stop", "err", err)
		}
	}
	d.stops = nil
	d.log.Info("mxbox stopped")
	return errors.Join(errs...)
}
