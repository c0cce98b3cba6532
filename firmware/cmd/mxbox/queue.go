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
	"github.com/mxbox/mxbox/firmware/delivery"
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
	var f delivery.Filter
	fs.StringVar(&f.Sender, "sender", "", "only senders containing this")
	fs.StringVar(&f.Recipient, "recipient", "", "only messages with a recipient containing this")
	fs.StringVar(&f.NextHop, "next-hop", "", "only messages for this next hop")
	fs.StringVar(&f.State, "state", "", "only this state: incoming, active, deferred, held")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var msgs []delivery.Message
	var stats storage.Stats
	client := daemon.AdminClient(daemon.AdminSocket(cfg))
	if err := getJSON(client, "http://mxbox/v1/stats", &stats); err == nil {
		msgs, err = listOnline(client, f, *limit)
		if err != nil {
			fmt.Fprintf(os.Stderr, "mxbox queue list: %v\n", err)
			return 1
		}
	} else if isNoDaemon(err) {
		// No daemon: read the spool directly. Opening it takes Badger's
		// directory lock, so this fails cleanly if a daemon holds it after all.
		s, err := storage.Open(daemon.SpoolDir(cfg), storage.Options{GCInterval: time.Hour})
		if err != nil {
			fmt.Fprintf(os.Stderr, "mxbox queue list: daemon not reachable and %v\n", err)
			return 1
		}
		defer s.Close()
		err = s.Walk("", func(env *storage.Envelope) bool {
			if m := delivery.MessageOf(env, false); f.Match(m) {
				msgs = append(msgs, m)
			}
			return *limit == 0 || len(msgs) < *limit
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "mxbox queue list: %v\n", err)
			return 1
		}
		stats = s.Stats()
	} else {
		fmt.Fprintf(os.Stderr, "mxbox queue list: %v\n", err)
		return 1
	}
	if msgs == nil {
		msgs = []delivery.Message{}
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{"messages": msgs, "stats": stats}); err != nil {
			return 1
		}
		return 0
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSIZE\tARRIVED\tSENDER\tRECIPIENTS\tSTATE\tNEXT ATTEMPT\tLAST ERROR")
	for _, m := range msgs {
		var rcpts []string
		for _, r := range m.Recipients {
			rcpts = append(rcpts, r.Addr+"("+r.State.String()+")")
		}
		next := m.NextAttempt.Format(time.RFC3339)
		if m.Held {
			next = "-"
		}
		from := m.From
		if from == "" {
			from = "<>"
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Size, m.Received.Format(time.RFC3339), from, strings.Join(rcpts, ","), m.State, next, m.LastError)
	}
	w.Flush()
	fmt.Printf("-- %d listed; queue: %d messages, %d bytes, %d held\n", len(msgs), stats.Messages, stats.Bytes, stats.Held)
	return 0
}

// listOnline pages through the daemon's filtered list.
func listOnline(c *http.Client, f delivery.Filter, limit int) ([]delivery.Message, error) {
	var out []delivery.Message
	after := ""
	for {
		q := url.Values{"sender": {f.Sender}, "recipient": {f.Recipient}, "next_hop": {f.NextHop}, "state": {f.State}, "after": {after}, "limit": {"1000"}}
		var page struct {
			Messages []delivery.Message `json:"messages"`
			Next     string             `json:"next"`
		}
		if err := getJSON(c, "http://mxbox/v1/queue/messages?"+q.Encode(), &page); err != nil {
			return nil, err
		}
		out = append(out, page.Messages...)
		if limit > 0 && len(out) >= limit {
			return out[:limit], nil
		}
		if page.Next == "" {
			return out, nil
		}
		after = page.Next
	}
}

func getJSON(c *http.Client, u string, v any) error {
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("admin API: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
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
