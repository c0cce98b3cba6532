package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/firmware/daemon"
)

func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Default(), nil
	}
	return config.Load(path)
}

func newLogger(level string, json bool) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	o := &slog.HandlerOptions{Level: lv}
	if json {
		return slog.New(slog.NewJSONHandler(os.Stderr, o))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, o))
}

func cmdServe(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (default: embedded development defaults)")
	logJSON := fs.Bool("log-json", false, "log as JSON lines")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	log := newLogger(cfg.LogLevel, *logJSON)
	d, err := daemon.Start(cfg, daemon.Options{Logger: log, Version: version})
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Info("signal received, shutting down", "signal", s.String())
	// A second signal while draining means "now".
	ctx, cancel := context.WithTimeout(context.Background(), cfg.SMTP.ShutdownTimeout.D()+30*time.Second)
	go func() { <-sig; cancel() }()
	if err := d.Stop(ctx); err != nil {
		return 1
	}
	return 0
}

func cmdConfig(args []string) int {
	if len(args) == 1 && args[0] == "default" {
		os.Stdout.Write(config.DefaultText())
		return 0
	}
	if len(args) == 2 && args[0] == "check" {
		if _, err := config.Load(args[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("%s: ok\n", args[1])
		return 0
	}
	fmt.Fprint(os.Stderr, "usage: mxbox config check FILE | mxbox config default\n")
	return 2
}
