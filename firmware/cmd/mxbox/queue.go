package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/mxbox/mxbox/firmware/daemon"
	"github.com/mxbox/mxbox/storage"
)

func cmdQueue(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, "usage: mxbox queue list [-config FILE] [--json]\n"+
			"       mxbox queue show|hold|release|delete|bounce [-config FILE] ID\n"+
			"       mxbox queue flush [-config FILE] [-next-hop NAME] [ID]\n")
		return 2
	}
	switch args[0] {
	case "list":
		return queueList(args[1:])
	case "show", "flush", "hold", "release", "delete", "bounce":
		return queueOp(args[0], args[1:])
	}
	fmt.Fprintf(os.Stderr, "mxbox queue: unknown command %q\n", args[0])
	return 2
}

func queueList(args []string) int {
	fs := flag.NewFlagSet("queue list", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (default: embedded defaults)")
	asJSON := fs.Bool("json", false, "print JSON")
	limit := fs.Int("limit", 0, "list at most this many messages (0 = all)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var fetch func(after string, n int) (*daemon.QueuePage, error)
	client := daemon.AdminClient(daemon.AdminSocket(cfg))
	if _, err := client.Get("http://mxbox/v1/stats"); err == nil {
		fetch = func(after string, n int) (*daemon.QueuePage, error) { return fetchPage(client, after, n) }
	} else if isNoDaemon(err) {
		// No daemon: read the spool directly. Opening it takes Badger's
		// directory lock, so this fails cleanly if a daemon holds it after all.
		s, err := storage.Open(daemon.SpoolDir(cfg), storage.Options{GCInterval: time.Hour})
		if err != nil {
			fmt.Fprintf(os.Stderr, "mxbox queue list: daemon not reachable and %v\n", err)
			return 1
		}
		defer s.Close()
		fetch = func(after string, n int) (*daemon.QueuePage, error) { return daemon.ListQueue(s, after, n) }
	} else {
		fmt.Fprintf(os.Stderr, "mxbox queue list: %v\n", err)
		return 1
	}
	var all []*storage.Envelope
	var stats storage.Stats
	after := ""
	for {
		n := 1000
		if *limit > 0 {
			n = min(n, *limit-len(all))
		}
		page, err := fetch(after, n)
		if err != nil {
			fmt.Fprintf(os.Stderr, "mxbox queue list: %v\n", err)
			return 1
		}
		all, stats = append(all, page.Messages...), page.Stats
		if page.Next == "" || (*limit > 0 && len(all) >= *limit) {
			break
		}
		after = page.Next
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{"messages": all, "stats": stats}); err != nil {
			return 1
		}
		return 0
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSIZE\tARRIVED\tSENDER\tRECIPIENTS\tSTATE\tNEXT ATTEMPT")
	for _, e := range all {
		var rcpts []string
		for _, r := range e.Recipients {
			rcpts = append(rcpts, r.Addr+"("+r.State.String()+")")
		}
		state, next := "queued", e.NextAttempt.Format(time.RFC3339)
		if e.Held {
			state, next = "held", "-"
		}
		from := e.From
		if from == "" {
			from = "<>"
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Size, e.Received.Format(time.RFC3339), from, strings.Join(rcpts, ","), state, next)
	}
	w.Flush()
	fmt.Printf("-- %d messages, %d bytes, %d held\n", stats.Messages, stats.Bytes, stats.Held)
	return 0
}

func fetchPage(c *http.Client, after string, n int) (*daemon.QueuePage, error) {
	resp, err := c.Get("http://mxbox/v1/queue?limit=" + fmt.Sprint(n) + "&after=" + url.QueryEscape(after))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("admin API: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	page := &daemon.QueuePage{}
	return page, json.NewDecoder(resp.Body).Decode(page)
}

// isNoDaemon tells "nobody is listening" from other failures.
func isNoDaemon(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// queueOp runs one operator command against the daemon's delivery runner
// (postqueue/postsuper semantics); these need a running daemon.
func queueOp(op string, args []string) int {
	fs := flag.NewFlagSet("queue "+op, flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (default: embedded defaults)")
	hop := fs.String("next-hop", "", "flush: every message for this next hop")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	id := fs.Arg(0)
	if id == "" && op != "flush" {
		fmt.Fprintf(os.Stderr, "usage: mxbox queue %s [-config FILE] ID\n", op)
		return 2
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	client := daemon.AdminClient(daemon.AdminSocket(cfg))
	base := "http://mxbox/v1/queue/messages/" + url.PathEscape(id)
	var req *http.Request
	switch op {
	case "show":
		req, _ = http.NewRequest(http.MethodGet, base, nil)
	case "delete":
		req, _ = http.NewRequest(http.MethodDelete, base, nil)
	case "flush":
		q := url.Values{}
		if id != "" {
			q.Set("id", id)
		}
		if *hop != "" {
			q.Set("next_hop", *hop)
		}
		req, _ = http.NewRequest(http.MethodPost, "http://mxbox/v1/queue/flush?"+q.Encode(), nil)
	default:
		req, _ = http.NewRequest(http.MethodPost, base+"/"+op, nil)
	}
	resp, err := client.Do(req)
	if err != nil {
		if isNoDaemon(err) {
			fmt.Fprintf(os.Stderr, "mxbox queue %s: no daemon running (%v)\n", op, err)
		} else {
			fmt.Fprintf(os.Stderr, "mxbox queue %s: %v\n", op, err)
		}
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "mxbox queue %s: %s: %s\n", op, resp.Status, strings.TrimSpace(string(body)))
		return 1
	}
	if op == "show" {
		os.Stdout.Write(body)
		return 0
	}
	fmt.Printf("%s %s: ok\n", op, strings.TrimSpace(id+" "+*hop))
	return 0
}
