package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/mxbox/mxbox/firmware/config"
	"github.com/mxbox/mxbox/firmware/daemon"
)

// serve runs the daemon like `mxbox serve`, with optional CPU and heap
// profiles written at SIGTERM/SIGINT.
func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file")
	cpu := fs.String("cpuprofile", "", "write a CPU profile here (start to signal)")
	mem := fs.String("memprofile", "", "write a heap profile here at the signal")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	if *cpu != "" {
		f, err := os.Create(*cpu)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	d, err := daemon.Start(cfg, daemon.Options{Logger: log, Version: "bench"})
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	// SIGUSR1 writes a heap profile now (memprofile.N) without a GC first,
	// to see what is live mid-run.
	for n := 1; ; n++ {
		if s := <-sig; s != syscall.SIGUSR1 {
			break
		}
		if *mem != "" {
			if f, err := os.Create(fmt.Sprintf("%s.%d", *mem, n)); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
	}
	if *mem != "" {
		runtime.GC()
		if f, err := os.Create(*mem); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Stop(ctx); err != nil {
		return 1
	}
	return 0
}
